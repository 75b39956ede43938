"""Splitting an evaluation over ``torchrun`` processes and summing what they counted.

Metrics here are sums (pixel counts, TP/FP/FN/IoU sums), so each process evaluates its own shard
and one ``all_reduce(SUM)`` gives the numbers a single process would give. Shards never repeat an
image (unlike ``DistributedSampler``, which pads), because a repeated image would change the sums.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(total: int, rank: int = 0, world_size: int = 1) -> range:
    """The dataset indices process ``rank`` evaluates: ``rank, rank + world_size, ...`` below ``total``.

    Interleaved rather than contiguous so that image sizes (and so run time) spread evenly.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    return range(rank, total, world_size)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (a no-op without an initialised process group).

    Returns a new CPU tensor. NCCL only reduces CUDA tensors, so the value travels through the
    current CUDA device there; gloo reduces CPU tensors directly.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.clone()
    work = tensor.clone()
    if dist.get_backend() == "nccl":
        work = work.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.cpu()


class SummableCounts(Protocol):
    """What a metric accumulator offers for reduction: its counts as one tensor, and back."""

    def as_tensor(self) -> torch.Tensor: ...

    def load_tensor(self, totals: torch.Tensor) -> None: ...


def all_reduce_counts(accumulator: SummableCounts) -> None:
    """Replace ``accumulator``'s counts by their sum over all processes, in place."""
    accumulator.load_tensor(all_reduce_sum(accumulator.as_tensor()))
