"""``lda-bench eval``: a thin shell over :func:`lda_bench.evaluation.evaluate`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from lda_bench.core import environment
from lda_bench.core.errors import CommandError
from lda_bench.core.render import console, print_error, print_info, print_warning
from lda_bench.core.signals import interrupted_exit_code
from lda_bench.evaluation import evaluate, metrics_table


def eval_command(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (.pth): mmdet 2.x/3.x, mmseg or lda-bench format."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Dataset root: COCO (annotations/, <split>/) or ADE20K (ADEChallengeData2016)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split (default val2017 for COCO, validation for ADE20K)."),
    task: Optional[str] = typer.Option(
        None, "--task", help="bbox, segm, bbox,segm, panoptic or sem_seg (default: what the model gives)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images of the split."),
    batch: int = typer.Option(1, "--batch", help="Images per forward pass (1 = mmdet's test setting)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    output: Optional[Path] = typer.Option(None, "--output", help="JSON report path (default results/eval-*.json)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report / predictions file."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name when the checkpoint does not tell."),
    upsampler: Optional[str] = typer.Option(None, "--upsampler", help="Upsampler name when the checkpoint does not tell."),
    upsampler_option: Optional[list[str]] = typer.Option(
        None, "--upsampler-option", help="KEY=VALUE upsampler option (repeatable)."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Allow full unpickling (runs code from the file; trusted files only)."),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", help="Only score this COCO results JSON or COCO-panoptic prediction JSON."),
    ann: Optional[Path] = typer.Option(None, "--ann", help="Annotation JSON (with --predictions, or to override)."),
    img_scale: Optional[str] = typer.Option(
        None, "--img-scale", help="Keep-ratio resize limits LONGxSHORT (default 1333x800; ADE20K 2048x512)."),
    size_divisor: Optional[int] = typer.Option(
        None, "--size-divisor", help="Pad to a multiple of this (default 64 / 32 by neck; not for sem_seg)."),
    save_predictions: Optional[Path] = typer.Option(
        None, "--save-predictions",
        help="Also write PREFIX.bbox.json / PREFIX.segm.json (COCO results) or PREFIX.panoptic.json + PNG folder."),
    mode: str = typer.Option("whole", "--mode", help="sem_seg inference: whole (mmseg ADE20K configs) or slide."),
    aligned_resize: bool = typer.Option(
        False, "--aligned-resize", help="sem_seg: AlignedResize to multiples of 32 (NVlabs SegFormer, FADE/SAPA)."),
    crop_size: Optional[str] = typer.Option(None, "--crop-size", help="sem_seg slide crop HxW (default 512x512)."),
    stride: Optional[str] = typer.Option(None, "--stride", help="sem_seg slide stride HxW (default 341x341)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Evaluate a checkpoint: COCO box / mask AP, COCO-panoptic PQ or ADE20K mIoU; or score a results file.

    The model and its upsampler are read from the checkpoint (mmdet / mmseg meta or lda-bench
    format); --model and --upsampler name them when the checkpoint does not.

    Exit codes: 0 scored; 1 the run failed (a checkpoint that does not fit the model, an unreadable
    image); 2 the request is wrong (unknown names, missing paths, conflicting options); 130 interrupted.

    Examples:

      lda-bench eval --ckpt fasterrcnn_r50_lau.pth --data /data/coco

      lda-bench eval --ckpt mask_rcnn_r50_fpn_carafe.pth --data /data/coco --task bbox,segm --limit 500

      lda-bench eval --ckpt segformer_b1_lau.pth --data /data/ade --aligned-resize

      lda-bench eval --predictions results/carafe.segm.json --ann /data/coco/annotations/instances_val2017.json
    """
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        report = evaluate(
            ckpt=ckpt, data=data, split=split, tasks=task, limit=limit, batch=batch, device=device,
            output=output, force=force, model=model, upsampler=upsampler, upsampler_options=upsampler_option,
            trust_checkpoint=trust_checkpoint, predictions=predictions, ann=ann, img_scale=img_scale,
            size_divisor=size_divisor, save_predictions=save_predictions, progress=not no_progress,
            mode=mode, aligned_resize=aligned_resize, crop_size=crop_size, stride=stride,
            command=environment.command_line(),
        )
    except CommandError as exc:
        if main_process:
            print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (lda_bench.core.signals)
        if main_process:
            print_info("interrupted; no report was written")
        raise typer.Exit(interrupted_exit_code()) from None
    if report is None:  # a non-main torchrun process: rank 0 reports
        return
    console.print(metrics_table(report))
    for line in report.get("warnings", []):
        print_warning(line)
    if "report_path" in report:
        print_info(f"report written to {report['report_path']}")
