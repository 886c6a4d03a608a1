"""Benchmarks: end-to-end decode/prefill/memory, optimizer search time and profiling cost.

Benchmarks are not tests: they report medians over repeats, the machine, versions and git sha,
ratios against the baseline measured in the same run, and achieved bytes/s against the copy
bandwidth measured in the same run. The last stdout line of each is JSON.
"""

__all__: list[str] = []
