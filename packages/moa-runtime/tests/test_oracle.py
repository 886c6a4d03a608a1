"""A mixed plan (different spans per layer and head) against the explicit-mask oracle."""

from __future__ import annotations

import pytest
import torch

from moa_plan import Plan
from moa_runtime import MoACache, apply_plan
from moa_runtime.testing import make_model, mixed_plan, oracle_logits, step_logits

ATOL = 1e-5


def _ids(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 96, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("arch", "kv_heads", "layers"), [("llama", 2, 2), ("qwen3", 4, 2), ("mistral", 1, 3)])
def test_prefill_and_every_decode_step(arch: str, kv_heads: int, layers: int, greedy: dict) -> None:
    model = make_model(arch, kv_heads=kv_heads, layers=layers)
    plan = mixed_plan(model)
    ids, steps = _ids(1, 37, 2), 24
    n = ids.shape[1] + steps
    windows = plan.windows(n)
    assert len(set(windows.ravel().tolist())) >= 3
    assert windows.min() < 10
    assert windows.max() > 40
    apply_plan(model, plan)
    with torch.no_grad():
        prefill = model(ids, cache=MoACache(plan, model.config, max_length=n)).logits
        out = model.generate(ids, max_new_tokens=steps, **greedy)
    full = out.sequences
    oracle = oracle_logits(model, plan, n, full[:, :-1])
    dense = oracle_logits(model, Plan.dense(plan.model, sink=4, block=4), n, full[:, :-1])
    assert (dense - oracle).abs().max() > 1e-2  # the windows really cut keys away
    torch.testing.assert_close(prefill, oracle[:, : ids.shape[1]], atol=ATOL, rtol=0)
    torch.testing.assert_close(step_logits(out), oracle[:, ids.shape[1] - 1 :], atol=ATOL, rtol=0)


def test_generation_past_n_keeps_sliding(greedy: dict) -> None:
    model = make_model("llama")
    plan = mixed_plan(model)
    ids = _ids(1, 30, 3)
    n = 34  # the cache is sized for 4 new tokens; generate 30
    apply_plan(model, plan)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=30, cache=MoACache(plan, model.config, max_length=n), **greedy)
    oracle = oracle_logits(model, plan, n, out.sequences[:, :-1])
    torch.testing.assert_close(step_logits(out), oracle[:, ids.shape[1] - 1 :], atol=ATOL, rtol=0)


@pytest.mark.parametrize("prompt_len", [1, 3])
def test_prompt_shorter_than_sink(prompt_len: int, greedy: dict) -> None:
    model = make_model("qwen2")
    plan = mixed_plan(model, sink=8, block=4)
    ids = _ids(1, prompt_len, 4)
    apply_plan(model, plan)
    with torch.no_grad():
        short = model.generate(ids, max_new_tokens=2, **greedy)  # N < sink
        past = model.generate(ids, max_new_tokens=12, cache=MoACache(plan, model.config, max_length=4), **greedy)
    oracle = oracle_logits(model, plan, prompt_len + 2, short.sequences[:, :-1])
    torch.testing.assert_close(step_logits(short), oracle[:, prompt_len - 1 :], atol=ATOL, rtol=0)
    oracle = oracle_logits(model, plan, 4, past.sequences[:, :-1])
    torch.testing.assert_close(step_logits(past), oracle[:, prompt_len - 1 :], atol=ATOL, rtol=0)


def test_left_padded_batch_equals_each_alone(greedy: dict) -> None:
    model = make_model("llama", kv_heads=2)
    plan = mixed_plan(model)
    lengths, steps = [9, 30, 17, 25], 12
    prompts = [_ids(1, t, 10 + i)[0] for i, t in enumerate(lengths)]
    width = max(lengths)
    ids = torch.zeros(4, width, dtype=torch.long)
    mask = torch.zeros(4, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    n = width + steps
    apply_plan(model, plan)
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=steps, **greedy)
        for i, p in enumerate(prompts):
            alone = model.generate(
                p[None], max_new_tokens=steps, cache=MoACache(plan, model.config, max_length=n), **greedy
            )
            assert torch.equal(batch.sequences[i, width:], alone.sequences[0, len(p) :])
            torch.testing.assert_close(step_logits(batch)[i], step_logits(alone)[0], atol=1e-4, rtol=0)
    full_mask = torch.cat([mask, torch.ones(4, steps - 1, dtype=torch.long)], dim=1)
    oracle = oracle_logits(model, plan, n, batch.sequences[:, :-1], full_mask)
    torch.testing.assert_close(step_logits(batch), oracle[:, width - 1 :], atol=ATOL, rtol=0)


def test_multi_turn_on_the_same_cache(greedy: dict) -> None:
    model = make_model("qwen2", kv_heads=2)
    plan = mixed_plan(model)
    turn_a, turn_b, steps = _ids(1, 26, 5), _ids(1, 19, 6), 10
    n = turn_a.shape[1] + steps  # sized for the first turn; the second turn runs past N
    apply_plan(model, plan)
    cache = MoACache(plan, model.config, max_length=n)
    with torch.no_grad():
        first = model.generate(turn_a, max_new_tokens=steps, cache=cache, **greedy)
        history = torch.cat([first.sequences, turn_b], dim=1)
        second = model.generate(history, max_new_tokens=steps, cache=cache, **greedy)
    assert torch.equal(second.sequences[:, : history.shape[1]], history)
    oracle = oracle_logits(model, plan, n, second.sequences[:, :-1])
    torch.testing.assert_close(
        step_logits(first), oracle[:, turn_a.shape[1] - 1 : first.sequences.shape[1] - 1], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(step_logits(second), oracle[:, history.shape[1] - 1 :], atol=ATOL, rtol=0)


def test_multi_turn_padded_batch_prefill_onto_cache() -> None:
    """Chunked prefill of a padded second chunk onto a cache equals the oracle over the whole sequence."""
    model = make_model("llama", kv_heads=2)
    plan = mixed_plan(model)
    a, b = _ids(2, 20, 7), _ids(2, 15, 8)
    mask_a = torch.ones(2, 20, dtype=torch.long)
    mask_a[1, :6] = 0
    mask_b = torch.ones(2, 15, dtype=torch.long)
    mask_b[0, :4] = 0  # padding in the middle of row 0's sequence
    n = 40
    apply_plan(model, plan)
    cache = MoACache(plan, model.config, max_length=n)
    mask = torch.cat([mask_a, mask_b], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        la = model(a, attention_mask=mask_a, position_ids=pos[:, :20], cache=cache).logits
        lb = model(b, attention_mask=mask, position_ids=pos[:, 20:], cache=cache).logits
    oracle = oracle_logits(model, plan, n, torch.cat([a, b], dim=1), mask)
    got = torch.cat([la, lb], dim=1)
    keep = mask.bool()
    torch.testing.assert_close(got[keep], oracle[keep], atol=ATOL, rtol=0)


def test_beam_search_equals_oracle() -> None:
    model = make_model("llama", kv_heads=2)
    plan = mixed_plan(model)
    ids, steps = _ids(1, 28, 9), 14
    n = ids.shape[1] + steps
    kwargs = {"num_beams": 2, "do_sample": False, "max_new_tokens": steps, "early_stopping": False}
    from moa_runtime.testing import use_oracle

    with torch.no_grad(), use_oracle(model, plan.sink, plan.windows(n)):
        ref = model.generate(ids, **kwargs)
    apply_plan(model, plan)
    with torch.no_grad():
        got = model.generate(ids, **kwargs)
    assert torch.equal(got, ref)


def test_generate_sizes_the_cache_from_the_call() -> None:
    model = make_model("llama")
    plan = mixed_plan(model)
    apply_plan(model, plan)
    ids = _ids(1, 20, 11)
    kwargs = {"do_sample": False, "return_dict_in_generate": True}
    with torch.no_grad():
        assert model.generate(ids, max_new_tokens=5, **kwargs).cache.max_length == 25
        assert model.generate(ids, max_length=33, **kwargs).cache.max_length == 33
        cache = MoACache.for_generation(model, plan, ids, 7)
        assert model.generate(ids, max_new_tokens=7, cache=cache, **kwargs).cache is cache
        sampled = model.generate(
            ids, max_new_tokens=4, do_sample=True, num_return_sequences=3, return_dict_in_generate=True
        )
    assert cache.max_length == 27
    assert cache.get_seq_length() == 26
    assert sampled.sequences.shape == (3, 24)
    assert sampled.cache.moa_layers[0].keys.shape[0] == 3


def test_multi_turn_left_padded_batch_with_generate(greedy: dict) -> None:
    model = make_model("qwen3", kv_heads=2)
    plan = mixed_plan(model)
    first_ids, steps = _ids(2, 18, 12), 6
    mask = torch.ones_like(first_ids)
    mask[0, :5] = 0
    apply_plan(model, plan)
    cache = MoACache(plan, model.config, max_length=18 + steps)
    with torch.no_grad():
        first = model.generate(first_ids, attention_mask=mask, max_new_tokens=steps, cache=cache, **greedy)
        history = torch.cat([first.sequences, _ids(2, 9, 13)], dim=1)
        hist_mask = torch.cat([mask, torch.ones(2, history.shape[1] - 18, dtype=torch.long)], dim=1)
        second = model.generate(history, attention_mask=hist_mask, max_new_tokens=steps, cache=cache, **greedy)
    full_mask = torch.cat([hist_mask, torch.ones(2, steps - 1, dtype=torch.long)], dim=1)
    oracle = oracle_logits(model, plan, 18 + steps, second.sequences[:, :-1], full_mask)
    torch.testing.assert_close(step_logits(second), oracle[:, history.shape[1] - 1 :], atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [5, 16])
def test_chunked_prefill_equals_oracle(chunk: int, greedy: dict) -> None:
    # generate() prefills long prompts in chunks onto the cache; a left-padded batch, chunk edges
    # inside the padding, the sink and the windows.
    model = make_model("llama", kv_heads=2)
    plan = mixed_plan(model)
    lengths, steps = [23, 61, 40], 8
    width = max(lengths)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, t in enumerate(lengths):
        ids[i, width - t :] = _ids(1, t, 20 + i)[0]
        mask[i, width - t :] = 1
    n = width + steps
    apply_plan(model, plan, prefill_chunk=chunk)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=steps, **greedy)
    full_mask = torch.cat([mask, torch.ones(3, steps - 1, dtype=torch.long)], dim=1)
    oracle = oracle_logits(model, plan, n, out.sequences[:, :-1], full_mask)
    torch.testing.assert_close(step_logits(out), oracle[:, width - 1 :], atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [5, 16])
def test_unpadded_chunks_attend_cache_and_new_keys_in_one_pass(
    chunk: int, greedy: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows at the same position past the sink, no padding: each later chunk goes through
    # blockwise_continue_prefill (ring + new keys at once), and the tokens still equal the oracle's.
    import moa_runtime.cache as cache_mod

    calls: list[int] = []
    real = cache_mod.blockwise_continue_prefill
    monkeypatch.setattr(cache_mod, "blockwise_continue_prefill", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = make_model("llama", kv_heads=2)
    plan = mixed_plan(model)
    ids, steps = torch.cat([_ids(1, 61, 30), _ids(1, 61, 31)]), 8
    apply_plan(model, plan, prefill_chunk=chunk)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps, **greedy)
    oracle = oracle_logits(model, plan, 61 + steps, out.sequences[:, :-1])
    # every chunk of more than one token (one token is a decode step) that starts past the sink, in each of
    # the 2 layers; the others take the general path
    later = [start for start in range(chunk, 61, chunk) if start >= plan.sink and min(61, start + chunk) - start > 1]
    assert len(calls) == 2 * len(later) > 0
    torch.testing.assert_close(step_logits(out), oracle[:, 60:], atol=ATOL, rtol=0)


def test_prefill_chunk_is_used_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, greedy: dict) -> None:
    from moa_runtime.cache import MoALayer

    model = make_model("llama", kv_heads=2)
    plan = mixed_plan(model)
    ids = _ids(2, 50, 7)
    calls: list[int] = []
    attend = MoALayer.attend
    monkeypatch.setattr(MoALayer, "attend", lambda self, q, *a: calls.append(q.shape[2]) or attend(self, q, *a))
    for chunk, widths in [(16, [16, 16, 16, 2, 1]), (None, [50, 1])]:
        calls.clear()
        apply_plan(model, plan, prefill_chunk=chunk)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=2, **greedy)
        assert calls[:: plan.num_layers] == widths
    with pytest.raises(Exception, match="prefill_chunk must be a positive"):
        apply_plan(model, plan, prefill_chunk=0)


def test_decode_masks_only_the_heads_whose_rows_differ(monkeypatch: pytest.MonkeyPatch, greedy: dict) -> None:
    """On the CPU every decode step is `moa_decode_equal`; unpadded rows need no mask, and in a left-padded
    batch only the heads whose span covers more than the shorter row's tokens are masked per row.

    Both batches are checked against the oracle (the padded one here, the unpadded ones above).
    """
    import moa_runtime.cache as cache_mod

    seen: list[tuple[int, ...]] = []
    equal = cache_mod.moa_decode_equal

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs.get("ragged", ())))
        return equal(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "moa_decode_equal", spy)
    monkeypatch.setattr(cache_mod, "moa_decode", None)  # the masked reference is never reached on the CPU
    model = make_model("llama", kv_heads=2, layers=2)
    plan = mixed_plan(model)
    apply_plan(model, plan)
    with torch.no_grad():
        out = model.generate(_ids(2, 20, 5), max_new_tokens=6, **greedy)
        assert len(seen) == 2 * 5 and not any(seen)  # 2 layers x 5 decode steps, no ragged head
        mask = torch.ones(2, 20, dtype=torch.long)
        mask[0, :7] = 0  # row 0 has 7 fewer tokens
        seen.clear()
        padded = model.generate(out.sequences[:, :20], attention_mask=mask, max_new_tokens=6, **greedy)
    spans = MoACache(plan, model.config, max_length=26).spans()
    expected = {tuple(h for h in range(2) if spans[layer, h] > 13 + 1) for layer in range(2)}
    assert set(seen[:2]) == expected and any(seen)  # first step: heads longer than row 0's 14 tokens
    full_mask = torch.cat([mask, torch.ones(2, 5, dtype=torch.long)], dim=1)
    oracle = oracle_logits(model, plan, 26, padded.sequences[:, :-1], full_mask)
    torch.testing.assert_close(step_logits(padded), oracle[:, 19:], atol=ATOL, rtol=0)
