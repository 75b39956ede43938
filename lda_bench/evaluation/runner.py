"""``lda-bench eval``: evaluate a checkpoint on COCO, or score a results file, and write a report."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import upsamplers
from lda_bench.checkpoints import (
    CheckpointError,
    build_from_checkpoint,
    load_checkpoint,
    resolve_model_config,
)
from lda_bench.data.coco import CocoDetection, DataError, load_coco_api
from lda_bench.data.transforms import DEFAULT_SCALE
from lda_bench.environment import report_header
from lda_bench.metrics.coco import IOU_TYPES, MetricsError, coco_evaluate
from lda_bench.models import get_model_spec, model_names
from lda_bench.models.introspect import ModelInferenceError
from lda_bench.reports import default_report_path, write_report

from . import distributed
from .errors import EvalError, EvalUsageError
from .inference import ImageResult, run_batches
from .progress import ProgressReporter


def parse_tasks(tasks: str | Sequence[str] | None) -> list[str] | None:
    if tasks is None:
        return None
    items = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    bad = [t for t in items if t not in IOU_TYPES]
    if bad or not items:
        raise EvalUsageError(f"--task must be a comma-separated subset of {', '.join(IOU_TYPES)}, got {tasks!r}")
    return list(dict.fromkeys(items))


def parse_img_scale(value: str | Sequence[int]) -> tuple[int, int]:
    """'1333x800' or (1333, 800) -> (1333, 800): long- and short-edge limits of the keep-ratio resize."""
    try:
        parts = [int(v) for v in (value.lower().split("x") if isinstance(value, str) else value)]
    except (ValueError, TypeError):
        parts = []
    if len(parts) != 2 or min(parts) < 1:
        raise EvalUsageError(f"--img-scale must look like 1333x800, got {value!r}")
    return parts[0], parts[1]


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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(obj: Any, path: Path, force: bool) -> Path:
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


def _check_output(output: str | Path | None, force: bool) -> None:
    if output is not None and Path(output).exists() and not force:
        raise EvalUsageError(f"{output} exists; pass --force to overwrite it or choose another path")


def _finish_report(report: dict[str, Any], output: str | Path | None, force: bool, label: str,
                   write: bool) -> dict[str, Any]:
    if write:
        path = Path(output) if output is not None else default_report_path("eval", label)
        try:
            report["report_path"] = str(write_report(report, path, force=force))
        except FileExistsError as exc:
            raise EvalUsageError(str(exc)) from None
    return report


def score_predictions(
    predictions: str | Path,
    ann: str | Path,
    tasks: str | Sequence[str] | None = None,
    output: str | Path | None = None,
    force: bool = False,
    write: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Score a COCO results JSON against an annotation JSON (no model involved)."""
    predictions, ann = Path(predictions), Path(ann)
    task_list = parse_tasks(tasks)
    _check_output(output, force)
    if not predictions.is_file():
        raise EvalUsageError(f"predictions file {predictions} does not exist")
    try:
        records = json.loads(predictions.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{predictions} is not valid JSON: {exc}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EvalError(f"{predictions} must hold a JSON list of COCO result records")
    if task_list is None:
        task_list = ["segm"] if records and "segmentation" in records[0] else ["bbox"]
    try:
        gt = load_coco_api(ann)
    except DataError as exc:
        raise EvalUsageError(str(exc)) from None
    report = report_header("eval", "cpu", command)
    report["mode"] = "score"
    report["predictions"] = str(predictions)
    report["annotations"] = str(ann)
    _score_into(report, gt, {t: records for t in task_list}, None)
    return _finish_report(report, output, force, predictions.stem, write)


def _score_into(report: dict[str, Any], gt: Any, results: Mapping[str, list[dict[str, Any]]],
                img_ids: Sequence[int] | None) -> None:
    report.setdefault("metrics", {})
    report.setdefault("stats", {})
    report.setdefault("num_results", {})
    for task, records in results.items():
        try:
            scored = coco_evaluate(gt, records, task, img_ids)
        except MetricsError as exc:
            raise EvalError(str(exc)) from None
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise EvalError(f"pycocotools could not score the {task} results: {type(exc).__name__}: {exc}") from None
        report["metrics"][task] = scored["metrics"]
        report["stats"][task] = scored["stats"]
        report["num_results"][task] = scored["num_results"]
        report["num_images_scored"] = scored["num_images"]


def evaluate(
    ckpt: str | Path | None = None,
    data: str | Path | None = None,
    split: str = "val2017",
    tasks: str | Sequence[str] | None = None,
    limit: int | None = None,
    batch: int = 1,
    device: str = "auto",
    output: str | Path | None = None,
    force: bool = False,
    model: str | None = None,
    upsampler: str | None = None,
    upsampler_options: Sequence[str] | Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    predictions: str | Path | None = None,
    ann: str | Path | None = None,
    img_scale: str | Sequence[int] = DEFAULT_SCALE,
    size_divisor: int | None = None,
    save_predictions: str | Path | None = None,
    progress: bool = True,
    write: bool = True,
    command: str | None = None,
) -> dict[str, Any] | None:
    """Evaluate ``ckpt`` on the COCO split under ``data`` (or, with ``predictions`` + ``ann``, only
    score a results file). Returns the report on the main process and None on the others.

    Under torchrun the images are split over the processes by batch and gathered on rank 0 before
    scoring, which gives the same numbers as one process. The report (and ``save_predictions``
    files ``<prefix>.bbox.json`` / ``<prefix>.segm.json``) are written atomically, only when the run
    completes.
    """
    if predictions is not None:
        if ckpt is not None or data is not None:
            raise EvalUsageError("--predictions only scores a results file; do not combine it with --ckpt/--data")
        if ann is None:
            raise EvalUsageError("--predictions needs --ann ANNOTATIONS.json")
        return score_predictions(predictions, ann, tasks, output, force, write, command)
    if ckpt is None or data is None:
        raise EvalUsageError("give --ckpt and --data (or --predictions with --ann)")
    if limit is not None and limit < 1:
        raise EvalUsageError(f"--limit must be >= 1, got {limit}")
    if batch < 1:
        raise EvalUsageError(f"--batch must be >= 1, got {batch}")
    if size_divisor is not None and size_divisor < 1:
        raise EvalUsageError(f"--size-divisor must be >= 1, got {size_divisor}")
    if model is not None and model not in model_names():
        raise EvalUsageError(f"unknown model {model!r}; available: {', '.join(model_names())}")
    if upsampler is not None:
        try:
            upsamplers.get_spec(upsampler)
        except ValueError as exc:
            raise EvalUsageError(str(exc)) from None
    task_list = parse_tasks(tasks)
    scale = parse_img_scale(img_scale)
    options = parse_options(upsampler_options)
    _check_output(output, force)
    ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        raise EvalUsageError(f"checkpoint {ckpt_path} does not exist")
    try:
        dataset = CocoDetection(data, split, ann)
    except DataError as exc:
        raise EvalUsageError(str(exc)) from None
    torch_device = resolve_device(device)

    ctx = distributed.init_distributed(torch_device.type)
    try:
        return _evaluate_checkpoint(
            ctx, ckpt_path, dataset, task_list, limit, batch, resolve_device(device, ctx), output, force, model,
            upsampler, options, trust_checkpoint, scale, size_divisor, save_predictions, progress, write, command,
        )
    finally:
        distributed.cleanup(ctx)


def _agree(error: str | None, ctx: distributed.DistContext, usage: bool = False) -> None:
    """Raise on every process if any process failed (so none waits forever in a collective)."""
    errors = [e for e in distributed.all_gather(error, ctx) if e]
    if errors:
        raise (EvalUsageError if usage else EvalError)(errors[0])


def _setup_model(ckpt_path: Path, trust: bool, model: str | None, upsampler: str | None,
                 options: dict[str, Any] | None, size_divisor: int | None) -> tuple[Any, Any, Any, Any]:
    checkpoint = load_checkpoint(ckpt_path, trust=trust)
    config = resolve_model_config(checkpoint, model, upsampler, options, size_divisor)
    detector, keys = build_from_checkpoint(checkpoint, config)
    return checkpoint, config, detector, keys


def _evaluate_checkpoint(
    ctx: distributed.DistContext, ckpt_path: Path, dataset: CocoDetection, task_list: list[str] | None,
    limit: int | None, batch: int, device: torch.device, output: str | Path | None, force: bool,
    model: str | None, upsampler: str | None, options: dict[str, Any] | None, trust: bool,
    scale: tuple[int, int], size_divisor: int | None, save_predictions: str | Path | None, progress: bool,
    write: bool, command: str | None,
) -> dict[str, Any] | None:
    error = None
    try:
        checkpoint, config, detector, keys = _setup_model(ckpt_path, trust, model, upsampler, options, size_divisor)
    except (CheckpointError, ModelInferenceError) as exc:
        error = str(exc)
    except ValueError as exc:  # unknown names or options coming from the checkpoint's metadata
        error = f"cannot build the model for {ckpt_path}: {exc}"
    _agree(error, ctx)
    spec = get_model_spec(config.model)
    tasks = task_list or list(spec.tasks)
    unsupported = [t for t in tasks if t not in spec.tasks]
    if unsupported:
        raise EvalUsageError(f"{config.model} cannot be scored on {', '.join(unsupported)} (it gives {', '.join(spec.tasks)})")
    if config.num_classes != len(dataset.cat_ids):
        raise EvalError(
            f"the checkpoint predicts {config.num_classes} classes but {dataset.ann_file} has "
            f"{len(dataset.cat_ids)} categories"
        )
    prediction_files = {} if save_predictions is None else {t: Path(f"{save_predictions}.{t}.json") for t in tasks}
    for path in prediction_files.values():
        _check_output(path, force)
    warnings = []
    names = checkpoint.class_names
    if names is not None and list(names) != dataset.class_names:
        warnings.append("the checkpoint's class names differ from the annotation's categories; labels are "
                        "mapped by position (label i -> i-th category of the annotation file)")

    detector.to(device)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    my_batches = distributed.shard_batches(count, batch, ctx)
    reporter = ProgressReporter(enabled=progress and ctx.is_main,
                                total=sum(len(b) for b in my_batches),
                                label=f"eval {config.model}/{config.upsampler}"
                                + (f" (rank 0 of {ctx.world_size})" if ctx.active else ""))
    start = time.perf_counter()
    results: list[ImageResult] | None = None
    error = None
    try:
        with reporter:
            results = run_batches(detector, dataset, my_batches, device, scale, config.size_divisor,
                                  "segm" in tasks, reporter.advance)
    except (DataError, RuntimeError, ValueError) as exc:
        error = f"inference failed: {exc}".splitlines()[0]
    elapsed = time.perf_counter() - start
    gathered = distributed.gather_to_main((results, error, elapsed), ctx)
    if not ctx.is_main:
        return None
    assert gathered is not None
    failures = [e for _, e, _ in gathered if e]
    if failures:
        raise EvalError(failures[0])
    merged = sorted((r for part, _, _ in gathered for r in part), key=lambda r: r.index)
    per_task = {t: [rec for r in merged for rec in getattr(r, t)] for t in tasks}

    report = report_header("eval", str(device), command)
    report["mode"] = "checkpoint"
    report["checkpoint"] = {
        "path": str(ckpt_path), "format": checkpoint.format, "weights_only": checkpoint.weights_only,
        "size_bytes": ckpt_path.stat().st_size, "sha256": _file_sha256(ckpt_path),
        "ignored_keys": keys.ignored, "class_names": names,
    }
    report["model"] = {**config.as_dict(), "params": sum(p.numel() for p in detector.parameters())}
    report["dataset"] = {"root": str(dataset.root), "split": dataset.split, "ann_file": str(dataset.ann_file),
                         "num_images": count, "images_in_split": len(dataset), "limit": limit}
    report["settings"] = {
        "tasks": tasks, "img_scale": list(scale), "size_divisor": config.size_divisor, "batch": batch,
        "device": str(device), "world_size": ctx.world_size,
        "test_cfg": {"rpn": vars(detector.test_cfg.rpn), "rcnn": vars(detector.test_cfg.rcnn)},
    }
    slowest = max(e for _, _, e in gathered)
    report["timing"] = {"inference_s": slowest, "images_per_s": count / slowest if slowest > 0 else None}
    report["warnings"] = warnings
    if prediction_files:
        report["predictions"] = {t: str(_write_json_atomic(per_task[t], p, force)) for t, p in prediction_files.items()}
    img_ids = [r.image_id for r in dataset.images[:count]]
    _score_into(report, dataset.coco, per_task, img_ids)
    return _finish_report(report, output, force, f"{config.model}-{config.upsampler}", write)
