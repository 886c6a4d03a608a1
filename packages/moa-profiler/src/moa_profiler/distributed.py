"""Data parallelism under torchrun: rank/world from the environment, sums all-reduced."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["World", "all_reduce_sum", "barrier", "init_world"]


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` (size 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files."""
        return self.rank == 0


def init_world(*, cuda: bool | None = None) -> World:
    """Join the process group if torchrun started us: NCCL for CUDA devices, gloo on CPUs.

    Args:
        cuda: Whether the ranks compute on CUDA (default: whether CUDA is available).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local)


def all_reduce_sum(tensor: torch.Tensor, world: World, device: torch.device) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returned on the CPU); identity for one rank."""
    if world.size == 1:
        return tensor
    import torch.distributed as dist

    buffer = tensor.to(device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.cpu()


def barrier(world: World) -> None:
    """Wait for every rank (no-op for one rank)."""
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()
