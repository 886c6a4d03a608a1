"""moa-runtime: Run a moa plan inside Hugging Face transformers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
