"""``lda-bench regress``: measure a suite with paired timing, compare with a baseline, decide."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lda_bench.core import environment, reports
from lda_bench.core.errors import UsageError
from lda_bench.core.options import split_list
from lda_bench.core.signals import interrupted_exit_code
from lda_bench.profiling.allocator import stabilize_malloc
from lda_bench.profiling.cases import Case, build_cases, check_cases, seeded_module
from lda_bench.profiling.runner import Settings, run_cases, static_fields
from lda_bench.profiling.session import prepare_suite, upsampler_entries
from lda_bench.profiling.suites import builtin_suites
from lda_bench.profiling.timing import measure_latency

from .ab import judge_pair, measure_against
from .gate import EXIT_SETUP, CaseVerdict, GateSettings, exit_code, judge
from .outputs import junit_xml, markdown_summary
from .paired import CALIBRATION_WORKLOAD, REFERENCE_WORKLOAD, Timing, calibration_workload, measure_paired, reference_workload

DEFAULT_SUITE = "ci"
REPORT_KIND = "regress"
# What the gate records besides the timing: parameter and MAC counts (any change is printed).
STATIC_SETTINGS = Settings(metrics=("params", "flops"))


def _calibrate() -> dict[str, Any]:
    stats = measure_latency(calibration_workload(), "cpu", repeats=7, min_time=0.2, warmup=1)
    return {"workload": CALIBRATION_WORKLOAD, "median_ms": stats.median, "iqr_ms": stats.iqr, "n": stats.n}


def measure_case_paired(case: Case, timing: Timing, mac_cache: dict[Any, Any]) -> dict[str, Any]:
    module = seeded_module(case)
    described = static_fields(case, module, STATIC_SETTINGS, mac_cache)
    record = {k: described[k] for k in ("backend", "params", "macs") if k in described}
    inputs = case.inputs()

    def run_case() -> None:
        with torch.inference_mode():
            module(*inputs)

    samples = measure_paired(run_case, reference_workload(case), case.device, rounds=timing.rounds,
                             min_time=timing.min_time, max_time=timing.max_time, warmup=timing.warmup)
    record.update(samples.as_dict())
    return record


def measure(
    suite: str | Path,
    *,
    upsampler: str | None = None,
    backend: str | None = None,
    threads: int | None = None,
    timing: Timing | None = None,
    command: str | None = None,
    on_cases: Callable[[list[Case]], None] | None = None,
    on_start: Callable[[Case], None] | None = None,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Paired measurement of every case of ``suite``: a ``regress`` report (also a baseline)."""
    timing = timing or Timing()
    allocator = stabilize_malloc()
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    prepared = prepare_suite(suite, None, None, None, None, None)
    cases = build_cases(prepared, upsampler_entries(upsampler, prepared, None),
                        backends=split_list(backend))
    check_cases(cases)
    if on_cases:
        on_cases(cases)
    devices = sorted({c.device for c in cases})
    report = environment.report_header(REPORT_KIND, devices[0] if len(devices) == 1 else None, command)
    report["suite"] = {"name": prepared.name, "description": prepared.description, "source": prepared.source}
    report["settings"] = {**dataclasses.asdict(timing), "threads": torch.get_num_threads(),
                          "reference_workload": REFERENCE_WORKLOAD, "allocator": allocator}
    report["calibration"] = {"before": _calibrate()}
    records, interrupted = run_cases(
        cases, Settings(), on_start=on_start, on_done=on_done,
        measure=lambda case, mac_cache: measure_case_paired(case, timing, mac_cache))
    report["calibration"]["after"] = None if interrupted else _calibrate()
    report["cases"] = records
    report["interrupted"] = interrupted
    return report


@dataclass
class GateResult:
    verdicts: list[CaseVerdict]
    reasons: list[str]
    exit_code: int
    report: dict[str, Any]
    baseline: dict[str, Any] | None = None
    path: Path | None = None
    notes: list[str] = field(default_factory=list)


def calibration_note(baseline: dict[str, Any], current: dict[str, Any]) -> str | None:
    try:
        b = baseline["calibration"]["before"]["median_ms"]
        c = current["calibration"]["before"]["median_ms"]
    except (KeyError, TypeError):
        return None
    return (f"calibration workload: {c:.2f} ms now vs {b:.2f} ms in the baseline (machine x{c / b:.2f}); "
            "recorded only, verdicts use the paired ratios")


def baseline_suite(baseline: dict[str, Any]) -> str:
    """The suite a baseline was measured on: its built-in name, else the file it came from."""
    info = baseline.get("suite", {})
    name = info.get("name") or DEFAULT_SUITE
    if name in builtin_suites() or not info.get("source") or not Path(info["source"]).is_file():
        return name
    return info["source"]


def load_baseline(path: str | Path) -> dict[str, Any]:
    try:
        return reports.load_report(path, kind=REPORT_KIND)
    except reports.ReportError as exc:
        raise UsageError(f"{exc}; create one with: lda-bench regress --update --baseline {path}") from None


def regress(
    baseline: str | Path | None = None,
    *,
    against: str | None = None,
    suite: str | None = None,
    upsampler: str | None = None,
    backend: str | None = None,
    gate: GateSettings | None = None,
    update: bool = False,
    force: bool = False,
    output: str | Path | None = None,
    summary: str | Path | None = None,
    junit: str | Path | None = None,
    threads: int | None = None,
    timing: Timing | None = None,
    command: str | None = None,
    repository: str | Path | None = None,
    on_cases: Callable[[list[Case]], None] | None = None,
    on_start: Callable[[Case], None] | None = None,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
) -> GateResult:
    """The throughput gate, as ``lda-bench regress``.

    With ``baseline``: measure now and judge against that committed report (with ``update``, write
    it instead). With ``against`` (a git revision): measure that revision and the working tree of
    ``repository`` (default: the current folder's) in one run (:mod:`lda_bench.regress.ab`).
    ``output`` keeps the JSON report, ``summary`` a Markdown summary, ``junit`` JUnit XML.
    """
    gate = gate or GateSettings()
    if (baseline is None) == (against is None):
        raise UsageError("give --baseline FILE (a committed baseline) or --against REV (a git revision), not both")
    if update and against is not None:
        raise UsageError("--update writes a baseline file; it does not take --against")
    for option, path in (("--output", output), ("--summary", summary), ("--junit", junit)):
        if path is not None:
            reports.ensure_writable(path, force, option)
    if update:
        assert baseline is not None
        baseline_path = Path(baseline)
        if baseline_path.exists() and not force:
            raise UsageError(f"baseline {baseline_path} exists; pass --force to replace it")
        report = measure(suite or DEFAULT_SUITE, upsampler=upsampler, backend=backend, threads=threads,
                         timing=timing, command=command, on_cases=on_cases, on_start=on_start, on_done=on_done)
        if report["interrupted"]:
            return GateResult([], ["interrupted: baseline not written"], EXIT_SETUP, report)
        failed = [c["id"] for c in report["cases"] if c["status"] != "ok"]
        if failed:
            return GateResult([], [f"cases failed, baseline not written: {', '.join(failed)}"], EXIT_SETUP, report)
        reports.write_report(report, baseline_path, force=force)
        return GateResult([], [], 0, report, path=baseline_path)
    base: dict[str, Any] | None = None
    notes: list[str] = []
    if against is not None:
        report = measure_against(against, suite or DEFAULT_SUITE, upsampler=upsampler, backend=backend,
                                 threads=threads, timing=timing, gate=gate, command=command,
                                 repository=None if repository is None else Path(repository),
                                 on_cases=on_cases, on_start=on_start, on_done=on_done)
        verdicts = [judge_pair(record, gate) for record in report["cases"]]
        reasons: list[str] = []
        info = report["against"]
        cand = info["candidate"]
        notes.append(f"base: {against} = {info['commit'][:12]}; candidate: the working tree of {cand['tree']}"
                     + (" with its uncommitted changes" if cand["dirty"] else f" at {str(cand['commit'])[:12]}"))
        compared_with = f"{against} ({info['commit'][:12]})"
    else:
        assert baseline is not None
        base = load_baseline(baseline)
        report = measure(suite or baseline_suite(base), upsampler=upsampler, backend=backend, threads=threads,
                         timing=timing, command=command, on_cases=on_cases, on_start=on_start, on_done=on_done)
        verdicts, reasons = judge(base, report, gate)
        notes += [n for n in [calibration_note(base, report)] if n]
        compared_with = str(baseline)
    if report["interrupted"]:
        reasons = reasons + ["interrupted before every case was measured"]
    code = interrupted_exit_code() if report["interrupted"] else exit_code(verdicts, reasons)
    report["gate"] = {
        "baseline": None if baseline is None else str(baseline),
        "against": against,
        "settings": dataclasses.asdict(gate),
        "verdicts": [v.as_dict() for v in verdicts],
        "reasons": reasons,
        "exit_code": code,
    }
    path = None
    if output is not None:
        path = reports.write_report(report, output, force=force)
    suite_name = report["suite"]["name"]
    if summary is not None:
        labels = ("base", "candidate") if against is not None else ("baseline", "now")
        reports.write_atomic(markdown_summary(verdicts, code, f"lda-bench regress · {suite_name} · "
                                                   f"against {compared_with}", *labels, reasons + notes),
                                  summary, force)
    if junit is not None:
        reports.write_atomic(junit_xml(verdicts, suite_name, case_seconds(report)), junit, force)
    return GateResult(verdicts, reasons, code, report, base, path, notes)


def case_seconds(report: dict[str, Any]) -> dict[str, float]:
    """Seconds of timed blocks per case id (both sides, or case and reference)."""
    out = {}
    for case in report.get("cases", []):
        series = ([case[side]["ms"] for side in ("base", "candidate") if isinstance(case.get(side), dict)]
                  or [case.get("case_ms") or [], case.get("reference_ms") or []])
        calls = ([case[side]["calls_per_sample"] for side in ("base", "candidate") if isinstance(case.get(side), dict)]
                 or [case.get("case_calls_per_sample", 1), case.get("reference_calls_per_sample", 1)])
        out[case["id"]] = sum(sum(ms) * n for ms, n in zip(series, calls)) / 1e3
    return out
