"""``lda-bench compare``: a thin shell over :func:`lda_bench.profiling.compare.compare_files`."""

from __future__ import annotations

from pathlib import Path

import typer

from lda_bench.core import reports
from lda_bench.core.render import console, print_note
from lda_bench.profiling.compare import compare_files
from lda_bench.profiling.render import compare_table

from .common import reported_errors


def compare_command(
    report_a: Path = typer.Argument(..., metavar="A.json", help="Baseline report."),
    report_b: Path = typer.Argument(..., metavar="B.json", help="Report to compare with the baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare two profile reports case by case (latency ratio B/A, MACs and params changes).

    Example: lda-bench compare results/before.json results/after.json
    """
    with reported_errors():
        comparison = compare_files(report_a, report_b)
    if as_json:
        print(reports.dumps(comparison.as_dict()), end="")
        return
    console.print(compare_table(comparison.rows, str(report_a), str(report_b)))
    for field, va, vb in comparison.environment_differences:
        print_note(f"{field} differs: {va!r} vs {vb!r}; timings may not be comparable")
