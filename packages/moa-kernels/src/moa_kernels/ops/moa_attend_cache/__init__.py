"""``moa_attend_cache``: new prompt tokens over the packed ring cache (the cache half of a multi-turn prefill)."""

from __future__ import annotations

from moa_kernels.ops.moa_attend_cache.reference import reference_moa_attend_cache, slot_positions

__all__ = ["moa_attend_cache", "reference_moa_attend_cache", "slot_positions"]

# PyTorch only on every device: the cache side of a second prompt is at most span_h keys per head.
moa_attend_cache = reference_moa_attend_cache
