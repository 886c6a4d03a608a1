"""Train the moa reference model: a small GQA Llama that retrieves over 2048-token chat prompts.

Recipe (see models/moa-reference/README.md and ../shared/research/reference-model-notes.md):
compact ``line <key> <value>`` lines with questions asked inline as chat turns, answer-token
loss weight 2, no loss on random keys/values, Markov filler for local heads, passkey, multi-key
and the rewrite (calibration) task in the mix, and an adaptive length curriculum that moves to
the next length once answer accuracy at the current one reaches ``--advance`` (0.85).

Example::

    nohup .venv/bin/python tools/train_reference_model.py --out runs/ref2 --minutes 68 --eval-every 500 \
        > /tmp/train.log 2>&1 &

Re-running the same command resumes from ``<out>/checkpoint.pt`` (written atomically every
``--checkpoint-minutes``). The final model is saved in Hugging Face format to ``<out>/model``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_tokenizer import build_tokenizer
from reference_data import LINES_ANSWER, NEEDLE_ANSWER, REWRITE_ANSWER, Builder, batch

from moa_plan.tasks import generate, to_messages

log = logging.getLogger("train_reference_model")
STAGES = (64, 128, 256, 512, 768, 1024, 1536, 2048)
MIX = {
    "lines": 0.3,
    "compact": 0.25,
    "repeat": 0.2,
    "rewrite": 0.04,
    "passkey": 0.08,
    "multikey": 0.08,
    "local": 0.05,
}


def parse_mix(text: str) -> dict[str, float]:
    """``task=share,...`` over the default mix; shares are renormalised to sum to 1."""
    mix = dict(MIX)
    for item in filter(None, text.split(",")):
        name, _, share = item.partition("=")
        if name not in MIX:
            raise argparse.ArgumentTypeError(f"unknown task {name!r} (known: {', '.join(MIX)})")
        try:
            mix[name] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"share of {name!r} is not a number: {share!r}") from None
        if mix[name] < 0:
            raise argparse.ArgumentTypeError(f"share of {name!r} is negative")
    total = sum(mix.values())
    if total <= 0:
        raise argparse.ArgumentTypeError("the task shares sum to zero")
    return {k: v / total for k, v in mix.items()}


def make_model(tokenizer, args: argparse.Namespace) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        attention_bias=args.prev_token_init > 0,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


@torch.no_grad()
def init_prev_token_head(model: LlamaForCausalLM, amplitude: float) -> None:
    """Make KV head 0 of layer 0 (and its query heads) attend to the previous position.

    Retrieval here is induction, which needs a positional previous-token head; growing one from
    scratch is the long plateau of training. Constant q/k biases give a content-free RoPE term
    ``a^2/sqrt(d) * sum_f cos((i - j - 1) theta_f)``, largest at ``j = i - 1``: query pair
    ``(a, 0)``, key pair ``a (cos theta_f, sin theta_f)`` in HF's rotate-half layout; the
    head's content projections start at zero, so it starts as a pure previous-token head.
    """
    attn = model.model.layers[0].self_attn
    cfg = model.config
    d, group = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    theta = model.model.rotary_emb.inv_freq.float()
    half = d // 2
    q = torch.zeros(d)
    q[:half] = amplitude
    k = torch.cat([amplitude * torch.cos(theta), amplitude * torch.sin(theta)])
    attn.q_proj.bias[: group * d] = q.repeat(group)
    attn.k_proj.bias[:d] = k
    # Content terms (and their cross terms with the large biases) would drown the pattern.
    attn.q_proj.weight[: group * d] = 0.0
    attn.k_proj.weight[:d] = 0.0


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model, opt, state: dict, args: argparse.Namespace) -> None:
    """Model, optimizer, curriculum state and arguments, written atomically."""
    args_dict = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "state": state, "args": args_dict}, path)


@torch.no_grad()
def quick_eval(model, tokenizer, length: int, n: int, seed: int) -> dict[str, float]:
    """Greedy accuracy on chat-formatted lines and passkey prompts of ``length`` tokens.

    Teacher-forced: a prompt counts when every answer token and the end-of-turn token are the
    argmax, which is exactly when greedy decoding reproduces the answer.
    """
    model.eval()
    out = {}
    for task in ("lines", "passkey"):
        recs = generate(task, n, target_length=length, count_tokens=lambda s: len(s.split()), seed=seed, overhead=3)
        hits = 0
        for r in recs:
            messages = [*to_messages(r), {"role": "assistant", "content": r.answer}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            k = len(r.answer.split()) + 1
            pred = model(input_ids=ids[:, :-1]).logits[0, -k:].argmax(-1)
            hits += bool((pred == ids[0, -k:]).all())
        out[task] = hits / n
    model.train()
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/reference"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tokens-per-step", type=int, default=4096)
    p.add_argument("--advance", type=float, default=0.85)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--minutes", type=float, default=75.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--decay", type=float, default=0.2, help="share of --minutes at the end with a linear lr decay")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--prev-token-init",
        type=float,
        default=8.0,
        help="q/k bias amplitude that makes layer 0, KV head 0 a previous-token head (0: off)",
    )
    p.add_argument(
        "--mix",
        type=parse_mix,
        default=dict(MIX),
        help="task shares, e.g. lines=0.2,multikey=0.3 (unnamed tasks keep their default share; renormalised)",
    )
    p.add_argument("--export-only", action="store_true", help="export <out>/checkpoint.pt to <out>/model and exit")
    return p.parse_args(argv)


def step_loss(model, ids, w, kind) -> tuple[torch.Tensor, dict[int, tuple[int, int]]]:
    logits = model(input_ids=ids).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    loss = (ce * w.reshape(-1)).sum() / w.sum()
    hit = logits.argmax(-1) == ids[:, 1:]
    stats = {
        k: (int((hit & (kind == k)).sum()), int((kind == k).sum()))
        for k in (LINES_ANSWER, NEEDLE_ANSWER, REWRITE_ANSWER)
    }
    return loss, stats


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = make_model(tokenizer, args)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    state = {"step": 0, "stage": 0, "acc": 0.0, "elapsed": 0.0, "history": []}
    ckpt = args.out / "checkpoint.pt"
    if args.prev_token_init:
        init_prev_token_head(model, args.prev_token_init)
    if ckpt.exists():
        # weights_only: a checkpoint is data (tensors, numbers, strings), never code.
        saved = torch.load(ckpt, weights_only=True)
        missing, _ = model.load_state_dict(saved["model"], strict=False)
        if missing:
            # Warm start of a checkpoint saved without attention biases: keep the new biases.
            log.info("checkpoint lacks %d tensors (new attention biases); fresh optimizer", len(missing))
            init_prev_token_head(model, args.prev_token_init)
        else:
            opt.load_state_dict(saved["opt"])
        state = saved["state"]
        log.info("resumed at step %d (length %d)", state["step"], STAGES[state["stage"]])
    log.info("parameters: %d", sum(p.numel() for p in model.parameters()))
    if args.export_only:
        export(model, tokenizer, args.out / "model", state)
        return 0
    builder = Builder(tokenizer)
    stages = [s for s in STAGES if s <= args.max_length]
    start, last_ckpt = time.time() - state["elapsed"], time.time()
    bar = tqdm(total=int(args.minutes * 60), unit="s", mininterval=30, initial=int(state["elapsed"]))
    model.train()
    while state["step"] < args.max_steps and time.time() - start < args.minutes * 60:
        rng = np.random.default_rng([args.seed, state["step"]])
        top = state["stage"]
        stage = top if rng.random() < 0.7 or top == 0 else int(rng.integers(0, top))
        length = stages[stage]
        ids, w, kind = (
            torch.from_numpy(x) for x in batch(builder, rng, length, max(1, args.tokens_per_step // length), args.mix)
        )
        # Warm-up over 100 steps; linear decay to 5% over the last --decay share of the time budget.
        left = 1.0 - (time.time() - start) / (args.minutes * 60)
        lr = args.lr * min(1.0, (state["step"] + 1) / 100, max(0.05, left / args.decay) if args.decay > 0 else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, stats = step_loss(model, ids, w, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        hits, total = stats[LINES_ANSWER]
        if stage == top and total:
            state["acc"] = 0.9 * state["acc"] + 0.1 * hits / total
            if state["acc"] >= args.advance and top + 1 < len(stages):
                state["stage"] += 1
                state["acc"] = 0.0
                log.info("step %d: advancing to length %d", state["step"], stages[state["stage"]])
        now = time.time()
        state["elapsed"] = now - start
        bar.n = int(state["elapsed"])
        bar.set_postfix(
            step=state["step"], len=stages[top], loss=f"{loss.item():.3f}", acc=f"{state['acc']:.2f}", refresh=False
        )
        bar.update(0)
        if state["step"] % 50 == 0:
            needle = stats[NEEDLE_ANSWER]
            log.info(
                "step %d len %d loss %.3f lines-acc %.2f needle %d/%d rewrite %d/%d",
                state["step"],
                length,
                loss.item(),
                state["acc"],
                *needle,
                *stats[REWRITE_ANSWER],
            )
        if state["step"] % args.eval_every == 0:
            res = {n: quick_eval(model, tokenizer, n, 40, seed=10_000 + state["step"]) for n in (512, 1024, 2048)}
            state["history"].append(
                {"step": state["step"], "elapsed": state["elapsed"], **{str(k): v for k, v in res.items()}}
            )
            log.info("eval step %d: %s", state["step"], json.dumps(res))
        if now - last_ckpt > args.checkpoint_minutes * 60:
            save_checkpoint(ckpt, model, opt, state, args)
            last_ckpt = now
    bar.close()
    save_checkpoint(ckpt, model, opt, state, args)
    export(model, tokenizer, args.out / "model", state)
    return 0


def export(model, tokenizer, out: Path, state: dict) -> None:
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
    ).save_pretrained(out)
    (out / "training_state.json").write_text(json.dumps({k: v for k, v in state.items()}, indent=1, default=str))
    log.info("saved %s", out)


if __name__ == "__main__":
    raise SystemExit(main())
