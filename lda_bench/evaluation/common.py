"""What every ``lda-bench eval`` run shares: option parsing, output files, the report's common
sections, and running one process's share of the work and gathering it on rank 0."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from lda_bench.data.errors import DataError
from lda_bench.environment import report_header
from lda_bench.reports import default_report_path, write_report

from . import distributed
from .errors import EvalError, EvalUsageError
from .progress import ProgressReporter


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
    if value is None:
        return None
    try:
        parts = [int(v) for v in (value.lower().split("x") if isinstance(value, str) else value)]
    except (ValueError, TypeError, AttributeError):
        parts = []
    if len(parts) != 2 or min(parts) < 1:
        raise EvalUsageError(f"{option} must look like {example}, got {value!r}")
    return parts[0], parts[1]


def parse_img_scale(value: str | Sequence[int]) -> tuple[int, int]:
    """'1333x800' or (1333, 800) -> (1333, 800): long- and short-edge limits of the keep-ratio resize."""
    parsed = parse_size_pair(value, "--img-scale", "1333x800")
    assert parsed is not None
    return parsed


def parse_options(pairs: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """KEY=VALUE strings -> options, with Python literals for the values (k_u=3, style=pl, rpb=False)."""
    if pairs is None or isinstance(pairs, Mapping):
        return None if pairs is None else dict(pairs)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise EvalUsageError(f"--upsampler-option must look like KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = raw.strip()
    return options or None


def resolve_device(device: str, ctx: distributed.DistContext | None = None) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EvalUsageError("--device cuda was asked for but CUDA is not available here")
        if device == "cuda" and ctx is not None and ctx.active:
            return torch.device("cuda", ctx.local_rank)
        return torch.device(device)
    if device != "cpu":
        raise EvalUsageError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device("cpu")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(obj: Any, path: Path, force: bool) -> Path:
    if path.exists() and not force:
        raise EvalUsageError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output(output: str | Path | None, force: bool) -> None:
    if output is not None and Path(output).exists() and not force:
        raise EvalUsageError(f"{output} exists; pass --force to overwrite it or choose another path")


def finish_report(report: dict[str, Any], output: str | Path | None, force: bool, label: str,
                  write: bool) -> dict[str, Any]:
    if write:
        path = Path(output) if output is not None else default_report_path("eval", label)
        try:
            report["report_path"] = str(write_report(report, path, force=force))
        except FileExistsError as exc:
            raise EvalUsageError(str(exc)) from None
    return report


def agree(error: str | None, ctx: distributed.DistContext, usage: bool = False) -> None:
    """Raise on every process if any process failed (so none waits forever in a collective)."""
    errors = [e for e in distributed.all_gather(error, ctx) if e]
    if errors:
        raise (EvalUsageError if usage else EvalError)(errors[0])


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


def progress_reporter(request: EvalRequest, ctx: distributed.DistContext, config: Any, total: int) -> ProgressReporter:
    """The progress bar of rank 0 (stderr), counting this process's ``total`` images."""
    label = f"eval {config.model}/{config.upsampler}" + (f" (rank 0 of {ctx.world_size})" if ctx.active else "")
    return ProgressReporter(enabled=request.progress and ctx.is_main, total=total, label=label)


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
    reporter = progress_reporter(request, ctx, config, sum(len(b) for b in my_batches))

    def work() -> Any:
        with reporter:
            return run(my_batches, reporter.advance)

    return run_and_gather(work, ctx)


def in_dataset_order(parts: list[list[Any]]) -> list[Any]:
    """Per-image results of all processes (each with an ``index``) back in dataset order."""
    return sorted((r for part in parts for r in part), key=lambda r: r.index)
