"""The machine's copy bandwidth, measured in the same run as the benchmark it bounds."""

from __future__ import annotations

import statistics
import time

__all__ = ["copy_bandwidth"]


def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7, device: str = "cpu") -> float:
    """Median bytes/s of ``dst.copy_(src)`` on a buffer of ``nbytes`` (read + write counted).

    Args:
        nbytes: Buffer size; large enough to leave the caches.
        repeats: Timed copies (after one warm-up).
        device: torch device.
    """
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times)
