"""moa-kernels: Triton prefill and decode kernels for per-head sink + sliding-window attention, each beside a PyTorch reference.

Importing this package does not import triton; the Triton kernels are loaded on first use.
"""

from moa_kernels._checks import KernelInputError
from moa_kernels.merge import merge_attention
from moa_kernels.ops.moa_attend_cache import blockwise_continue_prefill, moa_attend_cache
from moa_kernels.ops.moa_decode import moa_decode, moa_decode_equal, reference_moa_decode
from moa_kernels.ops.moa_prefill import moa_prefill, reference_moa_prefill

__version__ = "0.1.0"

__all__ = [
    "KernelInputError",
    "__version__",
    "blockwise_continue_prefill",
    "merge_attention",
    "moa_attend_cache",
    "moa_decode",
    "moa_decode_equal",
    "moa_prefill",
    "reference_moa_decode",
    "reference_moa_prefill",
]
