"""Data-parallel evaluation under torchrun: which process runs what, and combining the results.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them the run is a single process and none of
this touches torch.distributed. Detection splits work by *batch* (a batch holds the same images
whatever the number of processes) and gathers the predictions; segmentation metrics are sums
(pixel counts, TP/FP/FN/IoU sums), so each process evaluates its own interleaved shard and one
``all_reduce(SUM)`` gives the numbers a single process would give. Shards never repeat an image
(unlike ``DistributedSampler``, which pads), because a repeated image would change the results.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when we created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistContext:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA); a no-op for one process."""
    if not launched_by_torchrun():
        return DistContext()
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(rank, world, local, owns_group=True)


def shard_batches(num_items: int, batch_size: int, ctx: DistContext) -> list[list[int]]:
    """The batches (lists of item indices) this process runs: batch b goes to rank b % world."""
    batches = [list(range(s, min(s + batch_size, num_items))) for s in range(0, num_items, batch_size)]
    return batches[ctx.rank :: ctx.world_size]


def gather_to_main(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every process's ``obj`` on rank 0 (in rank order); None elsewhere."""
    if not ctx.active:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


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
