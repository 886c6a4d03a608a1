"""Ops: one folder per op, each with ``reference.py`` (PyTorch), ``triton.py`` (kernel) and ``README.md``."""
