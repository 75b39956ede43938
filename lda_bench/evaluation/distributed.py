"""Data-parallel evaluation under torchrun: which process runs what, and combining the results.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them the run is a single process and none of
this touches torch.distributed. Every evaluation splits its work the same way, by *batch*
(:func:`shard_batches`: batch b goes to rank b % world, so a batch holds the same images whatever
the number of processes; segmentation runs batches of one image), and brings the per-process
results together with :func:`gather_to_main` or :func:`all_gather`. Detection gathers its
predictions, panoptic segmentation its per-image PQ numbers (summed on rank 0 in image order, so
the floating-point sums equal one process's), semantic segmentation its integer pixel counts.
Shards never repeat an image (unlike ``DistributedSampler``, which pads), because a repeated
image would change the results.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

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


def current_context() -> DistContext:
    """The context of an already initialised default process group (e.g. by ``mp.spawn`` code that
    called ``init_process_group`` itself), else a single process. It never owns the group."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistContext(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), owns_group=False)
    return DistContext()


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
