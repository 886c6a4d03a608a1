"""moa-runtime: run a moa plan inside Hugging Face transformers (per-head elastic KV cache, plain generate()).

Importing this package registers nothing; `apply_plan` (or `register`) does.
"""

from moa_runtime.attention import ATTN_NAME, apply_plan, moa_attention_forward, register, remove_plan
from moa_runtime.cache import IMPLEMENTATIONS, MoACache, MoALayer
from moa_runtime.errors import MoaRuntimeError
from moa_runtime.linear import left_operand_linears, packed_linears, packed_linears_available
from moa_runtime.loading import load_model, load_model_and_tokenizer, load_tokenizer, model_fingerprint
from moa_runtime.positional import positional_attention

__version__ = "0.1.0"

__all__ = [
    "ATTN_NAME",
    "IMPLEMENTATIONS",
    "MoACache",
    "MoALayer",
    "MoaRuntimeError",
    "__version__",
    "apply_plan",
    "left_operand_linears",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "model_fingerprint",
    "moa_attention_forward",
    "packed_linears",
    "packed_linears_available",
    "positional_attention",
    "register",
    "remove_plan",
]
