"""``lda-bench regress``: a thin shell over :func:`lda_bench.regress.session.regress`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lda_bench.core import environment, reports
from lda_bench.core.progress import ProgressBar
from lda_bench.core.render import console, print_error, print_info, print_message, print_note
from lda_bench.regress.gate import EXIT_SETUP, GateSettings
from lda_bench.regress.render import verdict_table
from lda_bench.regress.session import Timing, regress

from .common import fail, reported_errors


def regress_command(
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
    try:
        gate = GateSettings(threshold=threshold, alpha=alpha, max_noise=max_noise)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not update and not baseline.exists():
        raise fail(f"baseline {baseline} does not exist; create it with: lda-bench regress --update "
                   f"--baseline {baseline}", EXIT_SETUP)
    with ProgressBar() as progress, reported_errors(usage_code=EXIT_SETUP):
        result = regress(baseline, suite=suite, upsampler=upsampler, gate=gate, update=update, force=force,
                         output=output, threads=threads, timing=Timing(rounds=rounds, min_time=min_time),
                         command=environment.command_line(), on_cases=progress.on_cases,
                         on_start=progress.on_start, on_done=progress.on_done)
    if update:
        if result.exit_code == 0:
            print_info(f"baseline written to {result.path} ({len(result.report['cases'])} cases)")
        for reason in result.reasons:
            print_error(reason)
        raise typer.Exit(result.exit_code)
    if as_json:
        print(reports.dumps(result.report["gate"]), end="")
    else:
        console.print(verdict_table(result.verdicts, str(baseline)))
        for reason in result.reasons:
            print_message("not comparable", reason, "yellow")
        for v in result.verdicts:
            for note in v.notes:
                print_note(f"{v.id}: {note}")
        for note in result.notes:
            print_message("note", note)
        summary = {0: "[green]no regression[/]", 1: "[bold red]regression detected[/]",
                   2: "[yellow]undecided: not comparable or too noisy[/]"}.get(result.exit_code, "")
        console.print(summary + (" (advisory: exit 0)" if advisory and result.exit_code else ""))
    raise typer.Exit(0 if advisory else result.exit_code)
