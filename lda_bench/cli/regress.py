"""``lda-bench regress``: a thin shell over :func:`lda_bench.regress.session.regress`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lda_bench.core import environment, reports
from lda_bench.core.progress import ProgressBar
from lda_bench.core.render import console, print_error, print_info, print_message, print_note
from lda_bench.regress.gate import EXIT_SETUP, GateSettings
from lda_bench.regress.paired import Timing
from lda_bench.regress.render import pair_table, verdict_table
from lda_bench.regress.session import regress

from .common import fail, reported_errors


def regress_command(
    baseline: Optional[Path] = typer.Option(None, help="Committed baseline report (written by --update)."),
    against: Optional[str] = typer.Option(None, metavar="REV", help="Git revision (main, HEAD~1, a tag, a SHA) to "
                                          "measure in the same run as the working tree, instead of a baseline."),
    suite: Optional[str] = typer.Option(None, help="Suite to measure (default: the baseline's; 'ci' with --update "
                                                   "or --against)."),
    threshold: float = typer.Option(1.25, help="Slowdown factor (of the drift-cancelling ratio) that counts."),
    alpha: float = typer.Option(0.01, help="Significance level of the test (Wilcoxon signed-rank with --against, "
                                              "Mann-Whitney U with --baseline)."),
    max_noise: float = typer.Option(0.5, help="Largest IQR/median of the ratio samples a decision accepts."),
    advisory: bool = typer.Option(False, help="Print the verdicts but always exit 0."),
    update: bool = typer.Option(False, help="Write a new baseline from this measurement instead of judging."),
    force: bool = typer.Option(False, help="Allow --update / --output to replace an existing file."),
    output: Optional[Path] = typer.Option(None, help="Also write this run's measurement and verdicts as JSON."),
    summary: Optional[Path] = typer.Option(None, help="Also write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)."),
    junit: Optional[Path] = typer.Option(None, help="Also write JUnit XML, one test case per benchmark case."),
    upsampler: Optional[str] = typer.Option(None, "--upsampler", "-u", help="Only these upsamplers."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (recorded)."),
    rounds: int = typer.Option(20, help="Minimum paired rounds per case."),
    min_time: float = typer.Option(3.0, help="Minimum seconds of paired rounds per case."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
) -> None:
    """Throughput regression gate: judge this tree's speed against a git revision or a baseline.

    With --against REV: REV is checked out into a temporary git worktree and both trees are
    measured in one run, each in its own process, rounds alternating A B B A; a case is slower
    only if its median ratio candidate/base is beyond --threshold AND a Wilcoxon signed-rank test
    of the paired rounds says the change is significant.

    With --baseline FILE: every case is timed in rounds interleaved with a fixed PyTorch workload
    of the same shapes, and the per-round ratio is compared with the baseline's (Mann-Whitney U).

    Exit codes: 0 nothing regressed, 1 something regressed, 2 not comparable or too noisy,
    3 set-up error (missing baseline, unknown revision, failing cases on --update).

    Examples:

      lda-bench regress --against main

      lda-bench regress --against HEAD~1 --summary summary.md --junit gate.xml

      lda-bench regress --update --baseline results/baseline-ci-cpu.json

      lda-bench regress --baseline results/baseline-ci-cpu.json --advisory
    """
    try:
        gate = GateSettings(threshold=threshold, alpha=alpha, max_noise=max_noise)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if baseline is not None and against is None and not update and not baseline.exists():
        raise fail(f"baseline {baseline} does not exist; create it with: lda-bench regress --update "
                   f"--baseline {baseline}", EXIT_SETUP)
    with ProgressBar() as progress, reported_errors(code=EXIT_SETUP):
        result = regress(baseline, against=against, suite=suite, upsampler=upsampler, gate=gate, update=update,
                         force=force, output=output, summary=summary, junit=junit, threads=threads,
                         timing=Timing(rounds=rounds, min_time=min_time), command=environment.command_line(),
                         on_cases=progress.on_cases, on_start=progress.on_start, on_done=progress.on_done)
    if update:
        if result.exit_code == 0:
            print_info(f"baseline written to {result.path} ({len(result.report['cases'])} cases)")
        for reason in result.reasons:
            print_error(reason)
        raise typer.Exit(result.exit_code)
    if as_json:
        print(reports.dumps(result.report["gate"]), end="")
    else:
        if against is not None:
            console.print(pair_table(result.verdicts, f"lda-bench regress · against {against}"))
        else:
            console.print(verdict_table(result.verdicts, str(baseline)))
        for reason in result.reasons:
            print_message("not comparable", reason, "yellow")
        for v in result.verdicts:
            for note in v.notes:
                print_note(f"{v.id}: {note}")
        for note in result.notes:
            print_message("note", note)
        for option, path in (("summary", summary), ("junit", junit), ("report", output)):
            if path is not None:
                print_info(f"{option} written to {path}")
        summary = {0: "[green]no regression[/]", 1: "[bold red]regression detected[/]",
                   2: "[yellow]undecided: not comparable or too noisy[/]"}.get(
            result.exit_code, f"[yellow]interrupted: the cases measured so far are above[/] (exit {result.exit_code})")
        console.print(summary + (" (advisory: exit 0)" if advisory and result.exit_code else ""))
    raise typer.Exit(0 if advisory else result.exit_code)
