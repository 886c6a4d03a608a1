"""The per-head elastic KV cache: a transformers `Cache` whose layers hold sink + ring segments.

Layout of one layer (agreed with moa-kernels): ``keys, values: [B, M + 1, D]`` with
``M = sum_h capacity_h`` and ``capacity_h = sink + max(window_h, 0)`` (= ``span_h(N)`` whenever
``N >= sink``). KV head h owns slots ``[seg_start[h], seg_start[h] + capacity_h)``: sink slots
``[0, S)`` hold positions ``0..S-1`` and position ``p >= S`` lives at slot ``S + (p - S) % window_h``.
The extra last slot is a scratch slot that absorbs writes of tokens no head keeps (only possible when
``N < S``). ``lengths[b, h] = min(seen[b], capacity_h)`` valid slots are a prefix of each segment.

The layer's ``update`` only records the new keys and values; the attention function "moa" (see
`moa_runtime.attention`) then calls `MoALayer.attend`, which knows the padding mask, computes the
attention and writes the new tokens into the segments.
"""

from __future__ import annotations

import importlib.util
import logging
import weakref
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from moa_kernels import (
    blockwise_continue_prefill,
    merge_attention,
    moa_attend_cache,
    moa_decode,
    moa_decode_equal,
    moa_prefill,
)
from moa_plan import Plan
from moa_runtime.errors import MoaRuntimeError
from moa_runtime.positional import positional_attention

__all__ = ["MoACache", "MoALayer", "IMPLEMENTATIONS"]

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "reference", "triton")


def check_implementation(implementation: str) -> str:
    """Return ``implementation`` if valid, else raise `MoaRuntimeError`."""
    if implementation not in IMPLEMENTATIONS:
        raise MoaRuntimeError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}.")
    return implementation


def _use_triton(query: torch.Tensor, implementation: str) -> bool:
    """Whether ``implementation`` resolves to the Triton kernels for ``query`` (as moa_kernels decides)."""
    if implementation == "triton":
        return True
    return implementation == "auto" and query.is_cuda and importlib.util.find_spec("triton") is not None


def left_padding(valid: torch.Tensor) -> torch.Tensor | None:
    """``start`` int64 [B] if ``valid`` [B, T] is left padding (False* then True*), else None."""
    start = valid.shape[1] - valid.sum(dim=1)
    ar = torch.arange(valid.shape[1], device=valid.device)
    if torch.equal(valid, ar.unsqueeze(0) >= start.unsqueeze(1)):
        return start.to(torch.int64)
    return None


_MEMO: list[tuple[Any, bool]] = [(None, False)]


def _last_column_real(padding: torch.Tensor | None) -> bool:
    """Whether every row's newest token is real; one device sync per forward, shared by all layers.

    transformers hands the same mask tensor to every layer of a forward, so the answer is memoised
    on that tensor's identity (a weak reference).
    """
    if padding is None:
        return True
    ref, answer = _MEMO[0]
    if ref is not None and ref() is padding:
        return answer
    answer = bool(padding[:, -1].all())
    _MEMO[0] = (weakref.ref(padding), answer)
    return answer


def _count_range(seen: torch.Tensor) -> tuple[int, int] | None:
    """(fewest, most) tokens seen by any row, as Python integers, when ``seen`` lives on the CPU; else None."""
    if seen.device.type != "cpu" or seen.numel() == 0:
        return None
    return int(seen.min()), int(seen.max())


class MoALayer(CacheLayerMixin):
    """Sink + ring KV segments of one decoder layer, for all KV heads, packed in one buffer.

    Args:
        windows: int [H], window of each KV head (``span(N) - sink``; may be <= 0 when N < sink).
        sink: S, tokens always kept.
        implementation: "auto", "reference" or "triton" for the `moa_kernels` ops.
    """

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, windows: Any, sink: int, implementation: str = "auto") -> None:
        super().__init__()
        self.sink = int(sink)
        self.windows = [int(w) for w in np.asarray(windows).reshape(-1)]
        self.capacity = [self.sink + max(w, 0) for w in self.windows]
        self.seg_start_list = [int(s) for s in np.cumsum([0, *self.capacity])[:-1]]
        self.num_slots = int(sum(self.capacity))
        self.implementation = check_implementation(implementation)
        self.columns = 0
        self._seen = torch.zeros(0, dtype=torch.int64)
        self._seen_range: tuple[int, int] | None = None
        self.lengths = torch.zeros(0, 0, dtype=torch.int64)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"MoALayer(sink={self.sink}, capacity={self.capacity})"

    @property
    def seen(self) -> torch.Tensor:
        """int64 [B], tokens (padding excluded) each row has written so far."""
        return self._seen

    @seen.setter
    def seen(self, value: torch.Tensor) -> None:
        self._seen = value
        self._seen_range = _count_range(value)

    @property
    def num_heads(self) -> int:
        """Number of KV heads."""
        return len(self.windows)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate the packed buffers from the first keys' batch, heads, head_dim, dtype and device."""
        bsz, h, _, dim = key_states.shape
        if h != self.num_heads:
            raise MoaRuntimeError(f"the cache was built for {self.num_heads} KV heads but the layer has {h}.")
        self.device = key_states.device
        self.keys = key_states.new_zeros(bsz, self.num_slots + 1, dim)
        self.values = value_states.new_zeros(bsz, self.num_slots + 1, dim)
        self.seen = torch.zeros(bsz, dtype=torch.int64, device=self.device)
        self.lengths = torch.zeros(bsz, h, dtype=torch.int64, device=self.device)
        self.seg_start = torch.tensor(self.seg_start_list, dtype=torch.int64, device=self.device)
        self.cap_t = torch.tensor(self.capacity, dtype=torch.int64, device=self.device)
        self.win_t = torch.tensor(self.windows, dtype=torch.int64, device=self.device)
        self.is_initialized = True

    # --- transformers' CacheLayerMixin protocol -------------------------------------------------

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Record the new keys/values [B, H, T, D] and publish this layer to the attention kwargs.

        The attention modules of transformers pass their kwargs dict as ``kwargs=`` to the cache and then
        unpack the same dict into the attention function; the "moa" attention function finds this layer
        there as ``moa_layer`` and calls `attend`.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._pending is not None:
            raise MoaRuntimeError(
                "a MoACache was used without the 'moa' attention; call moa_runtime.apply_plan(model, plan) first."
            )
        attn_kwargs = kwargs.get("kwargs")
        if not isinstance(attn_kwargs, dict):
            raise MoaRuntimeError(
                "this model's attention does not pass its kwargs to the cache, so MoACache cannot serve it."
            )
        attn_kwargs["moa_layer"] = self
        self._pending = (key_states, value_states)
        self.columns += key_states.shape[2]
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) as transformers' mask builders expect (the "moa" mask ignores them)."""
        return self.columns + query_length, 0

    def get_seq_length(self) -> int:
        """Token columns processed so far (padding included), as for a DynamicCache."""
        return self.columns

    def get_max_length(self) -> int:
        """No maximum: windows keep sliding past N."""
        return -1

    def reset(self) -> None:
        """Forget all tokens (buffers are kept)."""
        if self.is_initialized:
            keys, values = self._kv()
            keys.zero_()
            values.zero_()
            self.seen = self.seen.zero_()
            self.lengths.zero_()
        self.columns = 0
        self._pending = None

    def _kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:
            raise MoaRuntimeError("the MoA cache layer is used before its buffers were allocated.")
        return self.keys, self.values

    def _select_rows(self, index: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        keys, values = self._kv()
        index = index.to(keys.device)
        self.keys = keys.index_select(0, index)
        self.values = values.index_select(0, index)
        self.seen = self.seen.index_select(0, index)
        self.lengths = self.lengths.index_select(0, index)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row b becomes old row ``beam_idx[b]``."""
        self._select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times."""
        if self.is_initialized:
            self._select_rows(torch.arange(self._kv()[0].shape[0]).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only rows ``indices``."""
        self._select_rows(torch.as_tensor(indices, dtype=torch.int64))

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported: evicted tokens cannot be restored."""
        raise MoaRuntimeError("a MoACache cannot be cropped (evicted tokens are gone).")

    # --- attention ---------------------------------------------------------------------------------

    def attend(self, query: torch.Tensor, padding: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Attention of the pending new tokens over the cache, then write them into their segments.

        Args:
            query: [B, HQ, T, D] after RoPE.
            padding: bool [B, >= T], the 2-D attention mask (its last T columns are the new tokens), or None.
            scale: softmax scale.

        Returns:
            o: [B, T, HQ, D] in query's dtype (0 on padding rows).
        """
        if self._pending is None:
            raise MoaRuntimeError("MoALayer.attend was called without new keys (the cache update did not run).")
        k, v = self._pending
        self._pending = None
        bsz, _, seqlen, _ = query.shape
        fresh = self.columns == seqlen
        if seqlen == 1 and not fresh and _last_column_real(padding):
            return self._decode(query, k, v, scale)
        valid = (
            torch.ones(bsz, seqlen, dtype=torch.bool, device=query.device)
            if padding is None
            else padding[:, -seqlen:].to(device=query.device, dtype=torch.bool)
        )
        start = left_padding(valid) if fresh else None
        if start is not None:
            out = moa_prefill(
                query.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                sink=self.sink,
                windows=self.win_t,
                start=start,
                scale=scale,
                implementation=self.implementation,
            )
            assert isinstance(out, torch.Tensor)
        elif self._seen_range is not None and (new_start := left_padding(valid)) is not None:
            out = self._continue(query, k, v, new_start, scale)
        else:
            out = self._generic(query, k, v, valid, scale)
        pos = self.seen.unsqueeze(1) + torch.cumsum(valid.to(torch.int64), dim=1) - 1
        self._write(k, v, pos, valid, self.seen + valid.sum(dim=1))
        return out

    def _decode(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """One new token per row: write it into its slot (ring overwrite), then attend over the segments.

        On the CPU the cache knows (as Python integers) the fewest and most tokens any row has seen:
        when all rows agree the slots are computed without tensor ops, and the attention is
        `moa_decode_equal` (one fused SDPA per head), which masks per row only the heads whose rows
        hold different numbers of slots (left-padded rows before a long head's ring is full). With
        implementation "reference", the masked `moa_decode` reference; on CUDA the Triton kernel.
        """
        seen_range = self._seen_range
        triton = _use_triton(query, self.implementation)
        keys, values = self._kv()
        if seen_range is not None and seen_range[0] == seen_range[1]:
            self._write_equal(k, v, seen_range[0])
        else:
            self._write_one(k, v)
        if triton:
            from moa_kernels.ops.moa_decode.triton import moa_decode_fwd

            # an upper bound of lengths saves the kernel launcher one device sync per layer and step
            out = moa_decode_fwd(
                query[:, :, 0],
                keys,
                values,
                seg_start=self.seg_start,
                lengths=self.lengths,
                scale=scale,
                max_length=max(self.capacity),
            )
            assert isinstance(out, torch.Tensor)
            return out.unsqueeze(1)
        if seen_range is not None and self.implementation == "auto":
            fewest = [min(seen_range[0] + 1, cap) for cap in self.capacity]
            most = [min(seen_range[1] + 1, cap) for cap in self.capacity]
            ragged = [h for h, (lo, hi) in enumerate(zip(fewest, most, strict=True)) if lo != hi]
            return moa_decode_equal(
                query[:, :, 0],
                keys,
                values,
                seg_start=self.seg_start_list,
                lengths=most,
                scale=scale,
                ragged=ragged,
                row_lengths=self.lengths if ragged else None,
            )
        out = moa_decode(
            query[:, :, 0],
            keys,
            values,
            seg_start=self.seg_start,
            lengths=self.lengths,
            scale=scale,
            implementation="reference",
        )
        assert isinstance(out, torch.Tensor)
        return out.unsqueeze(1)

    def _write_one(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one new token per row (k, v: [B, H, 1, D]) at each row's own position."""
        bsz, h, _, dim = k.shape
        pos = self.seen.unsqueeze(1)
        w = self.win_t.unsqueeze(0)
        ring = self.sink + torch.remainder(pos - self.sink, w.clamp(min=1))
        slot = torch.where(pos < self.sink, pos, ring)
        kept = (pos < self.sink) | (w > 0)
        idx = torch.where(kept, self.seg_start.unsqueeze(0) + slot, self.num_slots)
        idx = idx.unsqueeze(-1).expand(bsz, h, dim)
        keys, values = self._kv()
        keys.scatter_(1, idx, k[:, :, 0])
        values.scatter_(1, idx, v[:, :, 0])
        self._advance(self.seen + 1)

    def _write_equal(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> None:
        """`_write_one` when every row is at position ``pos``: the slots are Python integers."""
        s = self.sink
        slots = [
            start + (pos if pos < s else s + (pos - s) % w) if (pos < s or w > 0) else self.num_slots
            for start, w in zip(self.seg_start_list, self.windows, strict=True)
        ]
        keys, values = self._kv()
        index = torch.tensor(slots, dtype=torch.int64, device=keys.device)
        keys.index_copy_(1, index, k[:, :, 0])
        values.index_copy_(1, index, v[:, :, 0])
        self._seen = self._seen + 1
        self._seen_range = (pos + 1, pos + 1)
        self.lengths = torch.minimum(self._seen.unsqueeze(1), self.cap_t.unsqueeze(0))

    def _advance(self, seen: torch.Tensor) -> None:
        self.seen = seen
        self.lengths = torch.minimum(seen.unsqueeze(1), self.cap_t.unsqueeze(0))

    def cached_positions(self, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute positions int64 [B, capacity_h] and validity bool [B, capacity_h] of head's slots."""
        cap, w, s = self.capacity[head], self.windows[head], self.sink
        j = torch.arange(cap, device=self.seen.device).unsqueeze(0)
        seen = self.seen.unsqueeze(1)
        if w <= 0:
            return j.expand(seen.shape[0], cap), j < seen
        last = seen - 1 - s - (j - s)
        ring_pos = j + w * torch.div(last.clamp(min=0), w, rounding_mode="floor")
        pos = torch.where(j < s, j, ring_pos)
        valid = torch.where(j < s, j < seen, last >= 0)
        return pos, valid

    def _continue(
        self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """New tokens (left padding ``start`` [B] or none) after cached ones, on the CPU (a chunked prefill,
        a second turn): when every row has seen the same tokens (at least the sink) and none is padded,
        `blockwise_continue_prefill` over the ring and the new keys at once; else attention over the cache
        (`moa_attend_cache`) merged by lse with the prefill of the new tokens (`moa_prefill` at offset ``seen``)."""
        q_t, k_t, v_t = query.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        keys, values = self._kv()
        seen = self._seen_range
        if (
            self.implementation == "auto"
            and query.device.type == "cpu"
            and seen is not None
            and seen[0] == seen[1] >= self.sink
            and not bool(start.any())
        ):
            # Every row at the same position past the sink, no padding: cache and new keys in one pass.
            return blockwise_continue_prefill(
                q_t, k_t, v_t, keys, values, seg_start=self.seg_start_list, seen=seen[0], sink=self.sink,
                windows=self.windows, scale=scale,
            )  # fmt: skip
        o_c, lse_c = moa_attend_cache(
            q_t,
            keys,
            values,
            seg_start=self.seg_start,
            lengths=self.lengths,
            seen=self.seen,
            sink=self.sink,
            windows=self.win_t,
            start=start,
            scale=scale,
            implementation=self.implementation,
        )
        new = moa_prefill(
            q_t,
            k_t,
            v_t,
            sink=self.sink,
            windows=self.win_t,
            start=start,
            offset=self.seen,
            scale=scale,
            return_lse=True,
            implementation=self.implementation,
        )
        assert isinstance(new, tuple)
        out, _ = merge_attention(o_c, lse_c.transpose(1, 2), new[0], new[1].transpose(1, 2))
        return out

    def _generic(
        self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """New tokens over (cached slots + new keys) with explicit positions (multi-turn, odd padding)."""
        q_pos = self.seen.unsqueeze(1) + torch.cumsum(valid.to(torch.int64), dim=1) - 1
        cache_k, cache_v = self._kv()
        keys, values, kpos, kvalid = [], [], [], []
        for head in range(self.num_heads):
            s0, cap = self.seg_start_list[head], self.capacity[head]
            pos, ok = self.cached_positions(head)
            keys.append(torch.cat([cache_k[:, s0 : s0 + cap], k[:, head]], dim=1))
            values.append(torch.cat([cache_v[:, s0 : s0 + cap], v[:, head]], dim=1))
            kpos.append(torch.cat([pos, q_pos], dim=1))
            kvalid.append(torch.cat([ok, valid], dim=1))
        return positional_attention(
            query, keys, values, kpos, kvalid, q_pos, valid, sink=self.sink, windows=self.windows, scale=scale
        )

    def _write(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, total: torch.Tensor
    ) -> None:
        """Store the new tokens each head keeps (its sink positions and its last ``window`` positions).

        Args:
            k, v: [B, H, T, D]. pos: int64 [B, T] absolute positions. valid: bool [B, T].
            total: int64 [B], tokens seen per row after this write.
        """
        cache_k, cache_v = self._kv()
        for head in range(self.num_heads):
            w, s = self.windows[head], self.sink
            keep = valid & ((pos < s) | ((pos >= total.unsqueeze(1) - w) if w > 0 else torch.zeros_like(valid)))
            rows, cols = keep.nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            p = pos[rows, cols]
            slot = torch.where(p < s, p, s + torch.remainder(p - s, max(w, 1))) + self.seg_start_list[head]
            cache_k[rows, slot] = k[rows, head, cols]
            cache_v[rows, slot] = v[rows, head, cols]
        self._advance(total)

    def nbytes(self) -> int:
        """Bytes held by this layer's K/V buffers and bookkeeping."""
        if not self.is_initialized:
            return 0
        keys, values = self._kv()
        tensors = [keys, values, self.seen, self.lengths, self.seg_start, self.cap_t, self.win_t]
        return int(sum(t.numel() * t.element_size() for t in tensors))


class MoACache(Cache):
    """A transformers `Cache` holding, per layer and KV head, the sink plus a ring of the head's window.

    Args:
        plan: the `moa_plan.Plan` (checked against ``config``; a mismatch raises `moa_plan.PlanError`).
        config: the model's config (or its text config).
        batch_size, dtype, device: when all given, the buffers are allocated now; otherwise at the first update.
        max_length: N = prompt length + max_new_tokens; every head's span is ``plan.spans(N)``.
        implementation: "auto" (Triton on CUDA when available), "reference" or "triton".
    """

    def __init__(
        self,
        plan: Plan,
        config: Any,
        batch_size: int | None = None,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        implementation: str = "auto",
    ) -> None:
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        plan.check_compatible(text_config)
        if max_length is None or int(max_length) < 1:
            raise MoaRuntimeError(f"max_length (N = prompt length + max_new_tokens) must be >= 1, got {max_length}.")
        self.plan = plan
        self.max_length = int(max_length)
        self.implementation = check_implementation(implementation)
        windows = plan.windows(self.max_length)
        self.moa_layers = [MoALayer(windows[i], plan.sink, implementation) for i in range(plan.num_layers)]
        super().__init__(layers=list(self.moa_layers))
        if batch_size is not None and dtype is not None and device is not None:
            head_dim = int(plan.model.head_dim or 0)
            fake = torch.zeros(batch_size, plan.num_kv_heads, 0, head_dim, dtype=dtype, device=device)
            for layer in self.moa_layers:
                layer.lazy_initialization(fake, fake)

    @classmethod
    def for_generation(
        cls, model: Any, plan: Plan, input_ids: torch.Tensor | int, max_new_tokens: int, *, implementation: str = "auto"
    ) -> MoACache:
        """A cache for ``model.generate(input_ids, max_new_tokens=..., cache=...)``: N = prompt + max_new_tokens.

        Args:
            input_ids: the prompt [B, T] (or its length T).
        """
        prompt = input_ids if isinstance(input_ids, int) else int(input_ids.shape[-1])
        return cls(plan, model.config, max_length=prompt + int(max_new_tokens), implementation=implementation)

    def spans(self) -> np.ndarray:
        """int64 [L, H] slots per (layer, KV head) (= ``plan.spans(N)`` when N >= sink)."""
        return np.array([layer.capacity for layer in self.moa_layers], dtype=np.int64)

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors (K/V buffers plus a few small bookkeeping tensors)."""
        return int(sum(layer.nbytes() for layer in self.moa_layers))

    def dense_nbytes(self, length: int | None = None) -> int:
        """Bytes a dense KV cache of ``length`` tokens (default N) would hold for the same batch and dtype."""
        n = self.max_length if length is None else int(length)
        first = self.moa_layers[0]
        if not first.is_initialized:
            return 0
        keys, _ = first._kv()
        bsz, _, dim = keys.shape
        per_layer = 2 * bsz * first.num_heads * n * dim * keys.element_size()
        return int(per_layer * len(self.layers))
