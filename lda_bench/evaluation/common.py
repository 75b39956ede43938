"""What every ``lda-bench eval`` run shares: its request, error type, output checks, the report's
common sections, and running one process's share of the work and gathering it on rank 0."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lda_bench.core.devices import resolve_device
from lda_bench.core.environment import report_header
from lda_bench.core.errors import CommandError, UsageError
from lda_bench.core.options import parse_pair
from lda_bench.core.progress import ProgressBar
from lda_bench.core.reports import default_report_path, ensure_writable, write_report
from lda_bench.data.errors import DataError

from . import distributed


class EvalError(CommandError):
    """An evaluation failed while running (exit code 1): a checkpoint that does not fit, an
    unreadable image, a results file that cannot be scored. Bad requests raise ``UsageError``."""


@dataclass(frozen=True)
class EvalRequest:
    """The parsed options of one checkpoint evaluation."""

    ckpt: Path
    data: Path
    split: str | None
    tasks: list[str] | None
    limit: int | None
    batch: int
    device: str
    output: str | Path | None
    force: bool
    model: str | None
    upsampler: str | None
    upsampler_options: dict[str, Any] | None
    trust_checkpoint: bool
    ann: Path | None
    img_scale: tuple[int, int] | None
    size_divisor: int | None
    save_predictions: str | Path | None
    progress: bool
    write: bool
    command: str | None
    # semantic segmentation only
    mode: str = "whole"
    aligned_resize: bool = False
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None


def parse_size_pair(value: str | Sequence[int] | None, option: str, example: str) -> tuple[int, int] | None:
    """'1333x800' or (1333, 800) -> (1333, 800); None stays None."""
    return None if value is None else parse_pair(value, option, example)


def parse_img_scale(value: str | Sequence[int]) -> tuple[int, int]:
    """'1333x800' or (1333, 800) -> (1333, 800): long- and short-edge limits of the keep-ratio resize."""
    return parse_pair(value, "--img-scale", "1333x800")


def process_device(device: str, ctx: distributed.DistContext | None = None) -> torch.device:
    """The device this process evaluates on: ``device`` resolved, and under torchrun a bare
    ``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``)."""
    resolved = torch.device(resolve_device(device))
    if resolved.type == "cuda" and resolved.index is None and ctx is not None and ctx.active:
        return torch.device("cuda", ctx.local_rank)
    return resolved


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output(output: str | Path | None, force: bool, option: str = "--output") -> None:
    """A usage error if ``output`` exists and ``force`` is false (nothing to check for None)."""
    if output is not None:
        ensure_writable(output, force, option)


def finish_report(report: dict[str, Any], output: str | Path | None, force: bool, label: str,
                  write: bool) -> dict[str, Any]:
    if write:
        path = Path(output) if output is not None else default_report_path("eval", label)
        report["report_path"] = str(write_report(report, path, force=force))
    return report


def agree(error: str | None, ctx: distributed.DistContext, usage: bool = False) -> None:
    """Raise on every process if any process failed (so none waits forever in a collective)."""
    errors = [e for e in distributed.all_gather(error, ctx) if e]
    if errors:
        raise (UsageError if usage else EvalError)(errors[0])


def checkpoint_section(ckpt_path: Path, checkpoint: Any, keys: Any) -> dict[str, Any]:
    """The report's description of the checkpoint file (format, hash, ignored keys, class names)."""
    return {
        "path": str(ckpt_path), "format": checkpoint.format, "weights_only": checkpoint.weights_only,
        "size_bytes": ckpt_path.stat().st_size, "sha256": file_sha256(ckpt_path),
        "ignored_keys": keys.ignored, "class_names": checkpoint.class_names,
    }


def run_and_gather(work: Callable[[], Any], ctx: distributed.DistContext) -> tuple[list[Any], float] | None:
    """Run this process's ``work()`` and gather its result on rank 0.

    Returns (the results of every process in rank order, the slowest process's seconds) on rank 0
    and None elsewhere. A data or inference failure on any process becomes one EvalError on rank 0
    (the others return None), so no process waits forever in the gather.
    """
    start = time.perf_counter()
    result, error = None, None
    try:
        result = work()
    except (DataError, RuntimeError, ValueError, OSError) as exc:
        error = f"inference failed: {exc}".splitlines()[0]
    gathered = distributed.gather_to_main((result, error, time.perf_counter() - start), ctx)
    if gathered is None:
        return None
    failures = [e for _, e, _ in gathered if e]
    if failures:
        raise EvalError(failures[0])
    return [r for r, _, _ in gathered], max(s for _, _, s in gathered)


def timing_section(count: int, seconds: float) -> dict[str, Any]:
    return {"inference_s": seconds, "images_per_s": count / seconds if seconds > 0 else None}


def start_report(request: EvalRequest, device: torch.device, checkpoint: Any, config: Any,
                 model: torch.nn.Module, keys: Any) -> dict[str, Any]:
    """A checkpoint evaluation's report: header, the checkpoint file, the model it built."""
    report = report_header("eval", str(device), request.command)
    report["mode"] = "checkpoint"
    report["checkpoint"] = checkpoint_section(request.ckpt, checkpoint, keys)
    report["model"] = {**config.as_dict(), "params": sum(p.numel() for p in model.parameters())}
    return report


def progress_bar(request: EvalRequest, ctx: distributed.DistContext, config: Any, total: int) -> ProgressBar:
    """The progress bar of rank 0 (stderr), counting this process's ``total`` images."""
    label = f"eval {config.model}/{config.upsampler}" + (f" (rank 0 of {ctx.world_size})" if ctx.active else "")
    return ProgressBar(label, total, enabled=request.progress and ctx.is_main, transient=False, show_remaining=True)


def image_count(limit: int | None, available: int) -> int:
    """How many images of the split a run evaluates: the first ``limit``, or all."""
    return available if limit is None else min(limit, available)


def run_sharded(
    ctx: distributed.DistContext, request: EvalRequest, config: Any, count: int, batch: int,
    run: Callable[[list[list[int]], Callable[[int], None]], Any],
) -> tuple[list[Any], float] | None:
    """This process's batches of the first ``count`` images (:func:`distributed.shard_batches`)
    through ``run(batches, advance)`` under rank 0's progress bar, gathered as :func:`run_and_gather`."""
    my_batches = distributed.shard_batches(count, batch, ctx)
    reporter = progress_bar(request, ctx, config, sum(len(b) for b in my_batches))

    def work() -> Any:
        with reporter:
            return run(my_batches, reporter.advance)

    return run_and_gather(work, ctx)


def in_dataset_order(parts: list[list[Any]]) -> list[Any]:
    """Per-image results of all processes (each with an ``index``) back in dataset order."""
    return sorted((r for part in parts for r in part), key=lambda r: r.index)
