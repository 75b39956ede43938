"""``lda-bench profile`` and ``lda-bench run``: thin shells over :func:`lda_bench.profiling.profile`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from lda_bench.core import environment, reports
from lda_bench.core.options import parse_options
from lda_bench.core.progress import ProgressBar
from lda_bench.core.render import console, print_error, print_info, print_message, print_note
from lda_bench.profiling.render import profile_table, uncounted_notes
from lda_bench.profiling.session import DEFAULT_SUITE, ProfileResult, profile
from lda_bench.profiling.suites import builtin_suites

from .common import reported_errors


def _measure_and_show(as_json: bool, measure: Callable[[ProgressBar], ProfileResult]) -> None:
    """Run ``measure`` under a progress bar, print the table (or JSON) and what failed, exit."""
    with ProgressBar() as progress, reported_errors():
        result = measure(progress)
    report = result.report
    if as_json:
        print(reports.dumps(report), end="")
    else:
        console.print(profile_table(report))
        for note in uncounted_notes(report):
            print_note(note)
        for case in result.failed:
            print_message("failed", f"{case['id']}: {case['error']}", "red")
    if result.path is not None:
        print_info(f"report written to {result.path}")
    if result.write_error:
        print_error(result.write_error)
    if result.interrupted:
        print_message("interrupted", f"{len(report['cases'])} finished case(s) kept"
                      + (f" in {result.path}" if result.path else ""), "yellow")
    raise typer.Exit(result.exit_code)


def profile_command(
    upsampler: str = typer.Option("lda_aqu", "--upsampler", "-u",
                                  help="Upsampler name(s), comma-separated, 'all', or package.module:factory."),
    model: Optional[str] = typer.Option(None, help="Measure each upsampler inside this whole model "
                                                   "(e.g. faster_rcnn_r50_fpn) on its default input."),
    suite: str = typer.Option(DEFAULT_SUITE, help=f"Built-in suite ({', '.join(builtin_suites())}) or a YAML path."),
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
    rounds: int = typer.Option(1, help="Time latency in this many interleaved rounds: each round times every "
                                       "case once, in a rotated order, so that a shared machine's drift hits all "
                                       "alike; adds each case's overhead over the first upsampler of its step "
                                       "(paired per round). Default 1: one case after the other."),
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

      lda-bench profile --model faster_rcnn_r50_fpn -u nearest,carafe,lda_aqu --rounds 9 --metrics latency

      lda-bench profile --model faster_rcnn_r50_fpn -u all --metrics params --no-save
    """
    with reported_errors():
        options = parse_options(option)
    _measure_and_show(as_json, lambda progress: profile(
        upsampler, model=model, suite=suite, size=size, channels=channels, batch=batch, device=device,
        dtype=dtype, backend=backend, options=options, backward=backward, threads=threads, repeats=repeats,
        min_time=min_time, max_time=max_time, rounds=rounds, counter=counter, elementwise=elementwise,
        metrics=metrics, output=output, save=save, force=force, command=environment.command_line(),
        on_cases=progress.on_cases, on_start=progress.on_start, on_done=progress.on_done,
        on_rounds=progress.on_rounds, on_round=progress.on_round))


def run_command(
    suite_file: str = typer.Argument(..., metavar="SUITE", help="Suite YAML path or built-in suite name."),
    upsampler: Optional[str] = typer.Option(None, "--upsampler", "-u", help="Override the suite's upsamplers."),
    device: Optional[str] = typer.Option(None, help="Override the suite's devices."),
    dtype: Optional[str] = typer.Option(None, help="Override the suite's dtypes."),
    backend: Optional[str] = typer.Option(None, help="LDA-AQU backend(s), comma-separated."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Upsampler option KEY=VALUE "
                                                                            "(repeatable), on top of the suite's."),
    backward: bool = typer.Option(False, help="Also time forward+backward."),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
    repeats: Optional[int] = typer.Option(None, help="Minimum timed runs per case."),
    min_time: Optional[float] = typer.Option(None, help="Minimum seconds of timed runs per case."),
    rounds: int = typer.Option(1, help="Time latency in this many interleaved rounds, with each case's paired "
                                       "overhead over the first upsampler of its step (see profile --help)."),
    counter: str = typer.Option("fvcore", help="MAC counter: fvcore, dispatch or both."),
    output: Optional[Path] = typer.Option(None, help="JSON report path."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write the JSON report."),
    force: bool = typer.Option(False, help="Overwrite an existing --output file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report to stdout."),
) -> None:
    """Run a suite file: its upsamplers, inputs, dtypes, devices and metrics.

    Example: lda-bench run suites/segformer-ade.yaml
    """
    with reported_errors():
        options = parse_options(option)
    _measure_and_show(as_json, lambda progress: profile(
        upsampler, suite=suite_file, device=device, dtype=dtype, backend=backend, options=options or None,
        backward=backward, threads=threads, repeats=repeats, min_time=min_time, rounds=rounds, counter=counter,
        output=output, save=save, force=force, command=environment.command_line(),
        on_cases=progress.on_cases, on_start=progress.on_start, on_done=progress.on_done,
        on_rounds=progress.on_rounds, on_round=progress.on_round))
