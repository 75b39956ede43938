"""``lda-bench sweep`` and ``lda-bench plot``: cost curves and their figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lda_bench.core import environment, reports
from lda_bench.core.options import parse_bytes, parse_options
from lda_bench.core.progress import ProgressBar
from lda_bench.core.render import console, print_error, print_info, print_message
from lda_bench.plotting import plot_reports
from lda_bench.profiling.render import sweep_tables
from lda_bench.profiling.sweep import sweep

from .common import reported_errors


def sweep_command(
    upsampler: str = typer.Option("lda_aqu", "--upsampler", "-u",
                                  help="Upsampler name(s), comma-separated, 'all', or package.module:factory."),
    backend: Optional[str] = typer.Option(None, help="LDA-AQU backend(s), comma-separated: one series each."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Upsampler option KEY=VALUE (repeatable)."),
    sizes: Optional[str] = typer.Option(None, help="Input sizes HxW,HxW,... (default: the FPN steps of an 800x1333 "
                                                   "image, then 2x the pixels per step until a budget is reached)."),
    channels: int = typer.Option(256, help="Input channels."),
    batch: int = typer.Option(1, help="Batch size."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("fp32", help="fp32, fp16, bf16 or fp64."),
    backward: bool = typer.Option(False, help="Also time forward+backward and its peak memory."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's, recorded)."),
    repeats: int = typer.Option(5, help="Minimum timed runs per point."),
    min_time: float = typer.Option(0.5, help="Minimum seconds of timed runs per point."),
    max_time: float = typer.Option(30.0, help="Stop sampling a point after this many seconds (>= 3 runs)."),
    memory_budget: Optional[str] = typer.Option(None, help="End a series before a point predicted to need more "
                                                           "(e.g. 8G; default: half the machine's or GPU's memory)."),
    time_budget: float = typer.Option(10.0, help="End a series before a point predicted to take longer per call (s)."),
    output: Optional[Path] = typer.Option(None, help="JSON report path (default results/sweep-<time>.json)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write the JSON report."),
    force: bool = typer.Option(False, help="Overwrite an existing --output file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report to stdout instead of tables."),
) -> None:
    """Measure how each upsampler's time and memory grow with its input, against the machine's limits.

    Per point: latency (median, IQR), MACs, peak memory, GFLOP/s and the fraction of the roofline
    (matmul rate and memory bandwidth measured in the same run); per series: the fitted exponent
    of time and memory in output pixels. Draw the report with lda-bench plot.

    Examples:

      lda-bench sweep -u lda_aqu,carafe,dysample --backward

      lda-bench sweep -u lda_aqu --backend reference,cpp --sizes 26x42,52x84,104x168

      lda-bench sweep -u all --device cuda --dtype bf16 --output results/sweep-cuda.json
    """
    with reported_errors():
        options = parse_options(option)
        budget = None if memory_budget is None else parse_bytes(memory_budget, "--memory-budget")
    with ProgressBar() as progress, reported_errors():
        result = sweep(upsampler, options=options, backend=backend, sizes=sizes, channels=channels, batch=batch,
                       device=device, dtype=dtype, backward=backward, threads=threads, repeats=repeats,
                       min_time=min_time, max_time=max_time, memory_budget=budget, time_budget=time_budget,
                       output=output, save=save, force=force, command=environment.command_line(),
                       on_cases=progress.on_cases, on_start=progress.on_start, on_done=progress.on_done)
    report = result.report
    if as_json:
        print(reports.dumps(report), end="")
    else:
        for table in sweep_tables(report):
            console.print(table)
        for point in result.failed:
            print_message("failed", f"{point['id']}: {point['error']}", "red")
    if result.path is not None:
        print_info(f"report written to {result.path}")
    if result.write_error:
        print_error(result.write_error)
    if result.interrupted:
        print_message("interrupted", "the points measured so far are kept"
                      + (f" in {result.path}" if result.path else ""), "yellow")
    raise typer.Exit(result.exit_code)


def plot_command(
    report_files: list[Path] = typer.Argument(..., metavar="REPORT.json...",
                                              help="Sweep or profile reports; with two, also the per-case ratio."),
    out_dir: Path = typer.Option(..., "--output", "-o", help="Folder for the figures (PNG and SVG)."),
    force: bool = typer.Option(False, help="Overwrite existing figures."),
) -> None:
    """Draw reports: time and memory against output pixels, the roofline, and per-case ratios.

    Needs matplotlib: pip install 'lda-bench\\[plot]' (from a checkout: pip install -e ".\\[plot]").

    Examples:

      lda-bench plot results/sweep-cpu.json -o docs/figures

      lda-bench plot before.json after.json -o figures --force
    """
    with reported_errors():
        written = plot_reports(report_files, out_dir, force)
    for path in written:
        print_info(f"wrote {path}")
