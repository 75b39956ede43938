"""The ``lda-bench`` command line (Typer). Thin: parse, call library functions, render."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

import upsamplers

app = typer.Typer(
    help="Profile and evaluate feature upsamplers (LDA-AQU and its peers).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.command("list")
def list_command() -> None:
    """List the registered upsamplers."""
    table = Table(title="Registered upsamplers")
    for col in ("name", "guide", "params @ C=256", "backends", "reference"):
        table.add_column(col)
    for spec in upsamplers.available():
        params = sum(p.numel() for p in upsamplers.build(spec.name, 256).parameters())
        table.add_row(spec.name, "yes" if spec.needs_guide else "no", f"{params:,}", ", ".join(spec.backends),
                      spec.reference)
    console.print(table)


@app.command()
def profile(upsampler: str = typer.Option("lda_aqu", help="Registered name or package.module:factory.")) -> None:
    """Profile an upsampler (parameters for now)."""
    module = upsamplers.build(upsampler, 256)
    console.print(f"{upsampler}: {sum(p.numel() for p in module.parameters()):,} parameters at C=256")


# --- eval (issue 7): a thin shell over lda_bench.evaluation.evaluate ------------------------------
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402


@app.command("eval")
def eval_command(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (.pth): mmdet 2.x/3.x or lda-bench format."),
    data: Optional[Path] = typer.Option(None, "--data", help="COCO root with annotations/ and <split>/."),
    split: str = typer.Option("val2017", "--split", help="Split: annotations/instances_<split>.json and <split>/."),
    task: Optional[str] = typer.Option(None, "--task", help="bbox, segm or bbox,segm (default: all the model gives)."),
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
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Only score this COCO results JSON."),
    ann: Optional[Path] = typer.Option(None, "--ann", help="Annotation JSON (with --predictions, or to override)."),
    img_scale: str = typer.Option("1333x800", "--img-scale", help="Keep-ratio resize limits LONGxSHORT."),
    size_divisor: Optional[int] = typer.Option(None, "--size-divisor", help="Pad to a multiple of this (default 64 / 32 by neck)."),
    save_predictions: Optional[Path] = typer.Option(
        None, "--save-predictions", help="Also write PREFIX.bbox.json / PREFIX.segm.json (COCO results)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Evaluate a detection checkpoint on COCO (box / mask AP), or score a results file."""
    import os

    from rich.console import Console as _Console

    from lda_bench.evaluation import EvalError, evaluate, metrics_table

    main_process = os.environ.get("RANK", "0") == "0"
    err = _Console(stderr=True)
    try:
        report = evaluate(
            ckpt=ckpt, data=data, split=split, tasks=task, limit=limit, batch=batch, device=device,
            output=output, force=force, model=model, upsampler=upsampler, upsampler_options=upsampler_option,
            trust_checkpoint=trust_checkpoint, predictions=predictions, ann=ann, img_scale=img_scale,
            size_divisor=size_divisor, save_predictions=save_predictions, progress=not no_progress,
        )
    except EvalError as exc:
        if main_process:
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if main_process:
            err.print("interrupted; no report was written")
        raise typer.Exit(130) from None
    if report is None:  # a non-main torchrun process: rank 0 reports
        return
    console.print(metrics_table(report))
    for line in report.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {line}", markup=True, highlight=False, soft_wrap=True)
    if "report_path" in report:
        err.print(f"report written to {report['report_path']}", highlight=False, soft_wrap=True)


def main() -> None:
    app()
