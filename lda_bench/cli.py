"""The ``lda-bench`` command line (Typer). Thin: parse options, call library functions, render.

Exit codes: 0 success, 1 some case/evaluation failed, 2 bad usage, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import upsamplers
from lda_bench import environment, render, reports
from lda_bench.compare import compare_reports, environment_differences
from lda_bench.profiling.cases import UsageError
from lda_bench.suites import builtin_suites

app = typer.Typer(
    help="Profile and evaluate feature upsamplers (LDA-AQU and its peers).\n\n"
    "Start with:  lda-bench profile --upsampler lda_aqu",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
# Piped or captured output (CI logs, README examples) gets a wide console instead of Rich's 80
# columns, so tables do not wrap into unreadable cells.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def usage_errors() -> Iterator[None]:
    """Turn library ValueErrors (bad names, options, files) into one line and exit code 2."""
    try:
        yield
    except (UsageError, ValueError, FileExistsError, reports.ReportError) as exc:
        raise fail(str(exc)) from None


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["k_u=5", "rpb=false"]`` -> {"k_u": 5, "rpb": False} (values parsed as YAML scalars)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return options


# ------------------------------------------------------------------------------------------ list


@app.command("list")
def list_command(
    channels: int = typer.Option(256, help="Channel count used to count parameters."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the registered upsamplers: name, guide, parameters, backends, reference.

    Example: lda-bench list
    """
    import torch

    from upsamplers.ops import available_backends

    runnable = set(available_backends("cpu")) | (set(available_backends("cuda")) if torch.cuda.is_available() else set())
    rows = []
    for spec in upsamplers.available():
        try:
            params: int | None = sum(p.numel() for p in upsamplers.build(spec.name, channels).parameters())
        except Exception:  # noqa: BLE001 - a plugin that cannot build at this size still gets listed
            params = None
        rows.append({
            "name": spec.name,
            "needs_guide": spec.needs_guide,
            "params": params,
            "backends": list(spec.backends),
            "backends_available_here": [b for b in spec.backends if b == "pytorch" or b in runnable],
            "reference": spec.reference,
            "source": spec.source,
        })
    if as_json:
        print(reports.dumps({"channels": channels, "upsamplers": rows}), end="")
        return
    from rich.table import Table

    table = Table(title=f"Registered upsamplers (params at C={channels})", title_justify="left")
    for col in ("name", "guide", "params", "backends", "reference"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for row in rows:
        backends = ", ".join(b if b in row["backends_available_here"] else f"[dim]{b} (n/a here)[/]"
                             for b in row["backends"])
        table.add_row(row["name"], "yes" if row["needs_guide"] else "no", render.fmt_int(row["params"]), backends,
                      row["reference"])
    console.print(table)


# --------------------------------------------------------------------------------------- profile


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def _run_profile(as_json: bool, **kwargs: Any) -> None:
    from lda_bench.profiling.session import profile as run

    with _progress() as progress:
        task = progress.add_task("preparing", total=None)

        def on_cases(cases: list[Any]) -> None:
            progress.update(task, total=len(cases), description="measuring")

        def on_start(case: Any) -> None:
            progress.update(task, description=f"{case.label} {case.upsampler}")

        def on_done(case: Any, record: dict[str, Any]) -> None:
            progress.advance(task)

        with usage_errors():
            result = run(on_cases=on_cases, on_start=on_start, on_done=on_done, **kwargs)
    report = result.report
    if as_json:
        print(reports.dumps(report), end="")
    else:
        console.print(render.profile_table(report))
        for note in render.uncounted_notes(report):
            err_console.print(f"[yellow]note:[/] {note}", highlight=False)
        for case in result.failed:
            err_console.print(f"[red]failed:[/] {case['id']}: {case['error']}", highlight=False)
    if result.path is not None:
        err_console.print(f"report written to {result.path}", highlight=False)
    if result.interrupted:
        err_console.print(f"[yellow]interrupted:[/] {len(report['cases'])} finished case(s) kept"
                          + (f" in {result.path}" if result.path else ""), highlight=False)
    raise typer.Exit(result.exit_code)


@app.command()
def profile(
    upsampler: str = typer.Option("lda_aqu", "--upsampler", "-u",
                                  help="Upsampler name(s), comma-separated, 'all', or package.module:factory."),
    model: Optional[str] = typer.Option(None, help="Measure each upsampler inside this whole model "
                                                   "(e.g. faster_rcnn_r50_fpn) on its default input."),
    suite: str = typer.Option("fpn-coco", help=f"Built-in suite ({', '.join(builtin_suites())}) or a YAML path."),
    size: Optional[str] = typer.Option(None, help="A single input HxW instead of the suite's inputs "
                                                  "(with --model: the image size before padding)."),
    channels: Optional[int] = typer.Option(None, help="Input channels (default: the suite's; 256 with --size)."),
    batch: Optional[int] = typer.Option(None, help="Batch size (default: the suite's)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: the suite's, auto)."),
    dtype: Optional[str] = typer.Option(None, help="fp32, fp16, bf16 or fp64 (comma-separated for several)."),
    backend: Optional[str] = typer.Option(None, help="LDA-AQU backend(s): auto, reference, cpp, triton "
                                                     "(comma-separated to compare)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Upsampler option KEY=VALUE "
                                                                            "(repeatable), e.g. -o k_u=5."),
    backward: bool = typer.Option(False, help="Also time forward+backward."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's, recorded in the report)."),
    repeats: Optional[int] = typer.Option(None, help="Minimum timed runs per case (default 10)."),
    min_time: Optional[float] = typer.Option(None, help="Minimum seconds of timed runs per case (default 1.0)."),
    max_time: float = typer.Option(60.0, help="Stop sampling a case after this many seconds (>= 3 runs)."),
    counter: str = typer.Option("fvcore", help="MAC counter: fvcore, dispatch (torch FlopCounterMode) or both."),
    elementwise: str = typer.Option("count", help="Elementwise ops: count (1 MAC per element) or ignore "
                                                  "(papers' convention)."),
    metrics: Optional[str] = typer.Option(None, help="Only these metrics, comma-separated: params, flops, latency, "
                                                      "memory, accuracy (default: the suite's, all)."),
    output: Optional[Path] = typer.Option(None, help="JSON report path (default results/profile-<suite>-<time>.json)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write the JSON report."),
    force: bool = typer.Option(False, help="Overwrite an existing --output file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report to stdout instead of tables."),
) -> None:
    """Measure params, MACs/FLOPs, latency, throughput and peak memory of upsamplers.

    By default: LDA-AQU on the four FPN top-down steps of an 800x1333 COCO image (suite fpn-coco).

    Examples:

      lda-bench profile --upsampler lda_aqu

      lda-bench profile -u lda_aqu,carafe,dysample --backward

      lda-bench profile -u lda_aqu --backend reference,cpp --size 104x168

      lda-bench profile -u all --suite smoke --json --no-save

      lda-bench profile --model faster_rcnn_r50_fpn -u nearest,lda_aqu,carafe --repeats 3

      lda-bench profile --model faster_rcnn_r50_fpn -u all --metrics params --no-save
    """
    with usage_errors():
        options = parse_options(option)
    _run_profile(
        as_json, upsampler=upsampler, model=model, suite=suite, size=size, channels=channels, batch=batch, device=device,
        dtype=dtype, backend=backend, options=options, backward=backward, threads=threads, repeats=repeats,
        min_time=min_time, max_time=max_time, counter=counter, elementwise=elementwise, metrics=metrics, output=output,
        save=save, force=force, command=environment.command_line(),
    )


@app.command()
def run(
    suite_file: str = typer.Argument(..., metavar="SUITE", help="Suite YAML path or built-in suite name."),
    upsampler: Optional[str] = typer.Option(None, "--upsampler", "-u", help="Override the suite's upsamplers."),
    device: Optional[str] = typer.Option(None, help="Override the suite's devices."),
    dtype: Optional[str] = typer.Option(None, help="Override the suite's dtypes."),
    backend: Optional[str] = typer.Option(None, help="LDA-AQU backend(s), comma-separated."),
    backward: bool = typer.Option(False, help="Also time forward+backward."),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
    repeats: Optional[int] = typer.Option(None, help="Minimum timed runs per case."),
    min_time: Optional[float] = typer.Option(None, help="Minimum seconds of timed runs per case."),
    counter: str = typer.Option("fvcore", help="MAC counter: fvcore, dispatch or both."),
    output: Optional[Path] = typer.Option(None, help="JSON report path."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write the JSON report."),
    force: bool = typer.Option(False, help="Overwrite an existing --output file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report to stdout."),
) -> None:
    """Run a suite file: its upsamplers, inputs, dtypes, devices and metrics.

    Example: lda-bench run lda_bench/suites/segformer-ade.yaml
    """
    _run_profile(
        as_json, upsampler=upsampler, suite=suite_file, device=device, dtype=dtype, backend=backend,
        backward=backward, threads=threads, repeats=repeats, min_time=min_time, counter=counter, output=output,
        save=save, force=force, command=environment.command_line(),
    )


# --------------------------------------------------------------------------------------- compare


@app.command()
def compare(
    report_a: Path = typer.Argument(..., metavar="A.json", help="Baseline report."),
    report_b: Path = typer.Argument(..., metavar="B.json", help="Report to compare with the baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare two profile reports case by case (latency ratio B/A, MACs and params changes).

    Example: lda-bench compare results/before.json results/after.json
    """
    with usage_errors():
        a = reports.load_report(report_a, kind="profile")
        b = reports.load_report(report_b, kind="profile")
    rows = compare_reports(a, b)
    diffs = environment_differences(a, b)
    if as_json:
        payload = {
            "a": str(report_a), "b": str(report_b),
            "environment_differences": [{"field": k, "a": va, "b": vb} for k, va, vb in diffs],
            "cases": [{"id": r.id, "a_ms": r.a_ms, "b_ms": r.b_ms, "ratio": r.ratio, "macs_changed": r.macs_changed,
                       "params_changed": r.params_changed} for r in rows],
        }
        print(reports.dumps(payload), end="")
        return
    console.print(render.compare_table(rows, str(report_a), str(report_b)))
    for field, va, vb in diffs:
        err_console.print(f"[yellow]note:[/] {field} differs: {va!r} vs {vb!r}; timings may not be comparable",
                          highlight=False)


# ------------------------------------------------------------------------------------------- env


@app.command()
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the environment a report would record, and what makes timings unreliable now.

    Example: lda-bench env
    """
    info = environment.collect_environment()
    warnings = environment.timing_warnings(info)
    from upsamplers.ops import available_backends

    info["lda_aqu_backends_cpu"] = list(available_backends("cpu"))
    if as_json:
        print(reports.dumps({"env": info, "git": environment.git_state(), "warnings": warnings}), end="")
        return
    items = [(k, v) for k, v in info.items() if k != "thread_env"]
    items.append(("thread env", info["thread_env"] or "(none set)"))
    items.append(("git", environment.git_state()))
    console.print(render.key_value_table("lda-bench env", items))
    if warnings:
        for w in warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    else:
        console.print("[green]no conditions found that make timings unreliable[/]")


# --------------------------------------------------------------------------------------- regress


@app.command()
def regress(
    baseline: Path = typer.Option(..., help="Baseline report (written by --update)."),
    suite: Optional[str] = typer.Option(None, help="Suite to measure (default: the baseline's; 'ci' with --update)."),
    threshold: float = typer.Option(1.25, help="Slowdown factor (of the drift-cancelling ratio) that counts."),
    alpha: float = typer.Option(0.01, help="Significance level of the Mann-Whitney U test."),
    max_noise: float = typer.Option(0.5, help="Largest IQR/median of the ratio samples a decision accepts."),
    advisory: bool = typer.Option(False, help="Print the verdicts but always exit 0."),
    update: bool = typer.Option(False, help="Write a new baseline from this measurement instead of judging."),
    force: bool = typer.Option(False, help="Allow --update / --output to replace an existing file."),
    output: Optional[Path] = typer.Option(None, help="Also write this run's measurement and verdicts as JSON."),
    upsampler: Optional[str] = typer.Option(None, "--upsampler", "-u", help="Only these upsamplers."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (recorded)."),
    rounds: int = typer.Option(20, help="Minimum paired rounds per case."),
    min_time: float = typer.Option(3.0, help="Minimum seconds of paired rounds per case."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
) -> None:
    """Throughput regression gate: measure the suite now and judge it against a baseline.

    Every case is timed in rounds interleaved with a fixed PyTorch workload of the same shapes;
    the per-round ratio cancels machine drift. A case is slower only if its median ratio grew
    beyond --threshold AND a Mann-Whitney U test says the change is significant.

    Exit codes: 0 nothing regressed, 1 something regressed, 2 not comparable or too noisy,
    3 set-up error (missing baseline, failing cases on --update).

    Examples:

      lda-bench regress --update --baseline results/baseline-ci-cpu.json

      lda-bench regress --baseline results/baseline-ci-cpu.json --advisory
    """
    from lda_bench.regress.gate import EXIT_SETUP, GateSettings
    from lda_bench.regress.session import Timing
    from lda_bench.regress.session import regress as run_regress

    try:
        gate = GateSettings(threshold=threshold, alpha=alpha, max_noise=max_noise)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not update and not baseline.exists():
        raise fail(f"baseline {baseline} does not exist; create it with: lda-bench regress --update "
                   f"--baseline {baseline}", EXIT_SETUP)
    with _progress() as progress:
        task = progress.add_task("preparing", total=None)
        callbacks = {
            "on_cases": lambda cases: progress.update(task, total=len(cases), description="measuring"),
            "on_start": lambda case: progress.update(task, description=f"{case.label} {case.upsampler}"),
            "on_done": lambda case, record: progress.advance(task),
        }
        try:
            result = run_regress(baseline, suite=suite, upsampler=upsampler, gate=gate, update=update, force=force,
                                 output=output, threads=threads, timing=Timing(rounds=rounds, min_time=min_time),
                                 command=environment.command_line(), **callbacks)
        except (UsageError, ValueError, FileExistsError) as exc:
            raise fail(str(exc), EXIT_SETUP) from None
    if update:
        if result.exit_code == 0:
            err_console.print(f"baseline written to {result.path} ({len(result.report['cases'])} cases)")
        for reason in result.reasons:
            err_console.print(f"[red]error:[/] {reason}", highlight=False)
        raise typer.Exit(result.exit_code)
    if as_json:
        print(reports.dumps(result.report["gate"]), end="")
    else:
        console.print(render.verdict_table(result.verdicts, str(baseline)))
        for reason in result.reasons:
            err_console.print(f"[yellow]not comparable:[/] {reason}", highlight=False)
        for v in result.verdicts:
            for note in v.notes:
                err_console.print(f"[yellow]note:[/] {v.id}: {note}", highlight=False)
        for note in result.notes:
            err_console.print(f"note: {note}", highlight=False)
        summary = {0: "[green]no regression[/]", 1: "[bold red]regression detected[/]",
                   2: "[yellow]undecided: not comparable or too noisy[/]"}.get(result.exit_code, "")
        console.print(summary + (" (advisory: exit 0)" if advisory and result.exit_code else ""))
    raise typer.Exit(0 if advisory else result.exit_code)


# --- eval (issue 7): a thin shell over lda_bench.evaluation.evaluate ------------------------------
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402


@app.command("eval")
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
            mode=mode, aligned_resize=aligned_resize, crop_size=crop_size, stride=stride,
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
    try:
        app()
    except KeyboardInterrupt:  # outside a measurement loop: nothing to save
        err_console.print("interrupted")
        sys.exit(130)
