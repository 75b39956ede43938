"""Rich tables of profile reports and of their comparison (reports stay plain data)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from rich.table import Table
from rich.text import Text

from lda_bench.core.render import fmt_bytes, fmt_int, fmt_macs, fmt_ms, fmt_rate, fmt_ratio, short

from .compare import CaseComparison
from .suites import METRICS


def profile_table(report: dict[str, Any]) -> Table:
    """One row per case, grouped by input step."""
    settings = report.get("settings", {})
    env = report.get("env", {})
    cases = report.get("cases", [])
    devices = sorted({c["device"] for c in cases}) or ["-"]
    dtypes = sorted({c["dtype"] for c in cases}) or ["-"]
    title = (f"lda-bench profile · {report.get('suite', {}).get('name', '')} · {', '.join(devices)} · "
             f"{', '.join(dtypes)} · {settings.get('threads', env.get('threads'))} threads")
    table = Table(title=title, title_justify="left")
    # Columns of the metrics this run measured (``--metrics``); older reports have no such list.
    metrics = set(settings.get("metrics") or METRICS)
    backward = "latency" in metrics and any(c.get("forward_backward_latency_ms") for c in cases)
    columns: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
        ("step", "left", lambda c: c.get("label", "")),
        ("input", "left", lambda c: "x".join(str(s) for s in c["input_shape"][1:])
         + (f" b{c['input_shape'][0]}" if c["input_shape"][0] > 1 else "")),
        ("upsampler", "left", lambda c: c["upsampler"] + _options_suffix(c.get("options", {}))),
        ("backend", "left", lambda c: c.get("backend") or "-"),
    ]
    if "params" in metrics:
        columns.append(("params", "right", lambda c: fmt_int(c.get("params"))))
    if "flops" in metrics:
        columns.append(("MACs", "right", lambda c: fmt_macs(c.get("macs"))))
    if "latency" in metrics:
        columns.append(("ms (median ± IQR)", "right", lambda c: fmt_ms(c.get("latency_ms"))))
        baseline_ids = {c["latency_vs_baseline"]["baseline"] for c in cases if c.get("latency_vs_baseline")}
        if baseline_ids:  # timed in rounds (--rounds): the paired overheads
            columns.append(("vs first, paired [IQR]", "right",
                            lambda c: "baseline" if c["id"] in baseline_ids else fmt_overhead(c.get("latency_vs_baseline"))))
        if backward:
            columns.append(("fwd+bwd ms", "right", lambda c: fmt_ms(c.get("forward_backward_latency_ms"))))
        columns.append(("Mpix/s", "right", lambda c: fmt_rate((c.get("throughput") or {}).get("mpix_per_s"))))
        if "flops" in metrics and "machine" in report:
            columns.append(("% roof", "right", lambda c: fmt_roof(c.get("roofline"))))
    if "memory" in metrics:
        columns.append(("peak mem", "right", lambda c: fmt_bytes(c.get("peak_memory_bytes"))))
    columns.append(("status", "left", lambda c: Text("ok", style="green") if c["status"] == "ok"
                    else Text(short(c.get("error") or c["status"]), style="red")))
    for name, justify, _ in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    previous = None
    for case in cases:
        step = case.get("label", "")
        if previous is not None and step != previous:
            table.add_section()
        previous = step
        row = [cell(case) for _, _, cell in columns]
        table.add_row(*row)
    return table


def _options_suffix(options: dict[str, Any]) -> str:
    shown = {k: v for k, v in options.items() if k != "backend"}
    return "" if not shown else " (" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + ")"


def uncounted_notes(report: dict[str, Any]) -> list[str]:
    notes = []
    for case in report.get("cases", []):
        ops = case.get("uncounted_ops")
        if ops:
            notes.append(f"{case['id']}: uncounted ops {', '.join(f'{k} x{v}' for k, v in ops.items())}")
    return notes


def compare_table(rows: Iterable[CaseComparison], a_name: str, b_name: str) -> Table:
    table = Table(title=f"lda-bench compare · A = {a_name} · B = {b_name}", title_justify="left")
    for col, justify in (("step", "left"), ("upsampler", "left"), ("backend", "left"), ("A ms", "right"),
                         ("B ms", "right"), ("B / A", "right"), ("MACs A → B", "right"), ("params", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        a_ms = "-" if row.a_ms is None else f"{row.a_ms:.3f}"
        b_ms = "-" if row.b_ms is None else f"{row.b_ms:.3f}"
        if row.a is None:
            a_ms = "(absent)"
        if row.b is None:
            b_ms = "(absent)"
        macs = "-"
        if row.a and row.b:
            macs = fmt_macs(row.a.get("macs")) if not row.macs_changed else (
                f"{fmt_macs(row.a.get('macs'))} → {fmt_macs(row.b.get('macs'))}")
        params = "-"
        if row.a and row.b:
            params = fmt_int(row.a.get("params")) if not row.params_changed else (
                f"{fmt_int(row.a.get('params'))} → {fmt_int(row.b.get('params'))}")
        table.add_row(row.label, row.upsampler, row.backend or "-", a_ms, b_ms, fmt_ratio(row.ratio),
                      Text(macs, style="yellow" if row.macs_changed else ""),
                      Text(params, style="yellow" if row.params_changed else ""))
    return table


def fmt_fit(fitted: dict[str, Any] | None) -> str:
    """``1.02 ± 0.03`` (exponent ± standard error), ``1.02`` with two points, ``-`` without."""
    if not fitted:
        return "-"
    return f"{fitted['exponent']:.2f}" + ("" if fitted.get("stderr") is None else f" ± {fitted['stderr']:.2f}")


def fmt_overhead(overhead: dict[str, Any] | None) -> str:
    """``+9.4% [+7.3, +10.7]``: the median paired overhead and its quartiles (the median alone from
    fewer than 4 rounds), ``-`` without."""
    if not overhead:
        return "-"
    if overhead.get("rounds", 0) < 4:
        return f"{100 * overhead['median']:+.1f}%"
    return f"{100 * overhead['median']:+.1f}% [{100 * overhead['q1']:+.1f}, {100 * overhead['q3']:+.1f}]"


def fmt_roof(roof: dict[str, Any] | None) -> str:
    return "-" if not roof else f"{100 * roof['fraction_of_roofline']:.0f}%"


def sweep_tables(report: dict[str, Any]) -> tuple[Table, Table]:
    """The points of every series, and one row per series with its fitted exponents."""
    settings = report.get("settings", {})
    machine = report.get("machine") or {}
    peak = (machine.get("matmul_gflops") or {}).get(settings.get("dtype", "fp32"))
    title = (f"lda-bench sweep · {settings.get('device')} · {settings.get('dtype')} · {settings.get('threads')} threads"
             + (f" · matmul {peak:.0f} GFLOP/s, memory {machine.get('bandwidth_gb_s', 0):.1f} GB/s" if peak else ""))
    backward = bool(settings.get("backward"))
    points = Table(title=title, title_justify="left")
    columns = ["series", "input", "out Mpix", "MACs", "ms (median ± IQR)"] + (["fwd+bwd ms"] if backward else []) + \
              ["peak mem"] + (["fwd+bwd mem"] if backward else []) + ["GFLOP/s", "% roof", "status"]
    for name in columns:
        points.add_column(name, justify="left" if name in ("series", "input", "status") else "right")
    for series in report.get("series", []):
        for i, p in enumerate(series["points"]):
            roof = p.get("roofline")
            row = [series["label"] if i == 0 else "", "x".join(str(s) for s in p["input_shape"][1:]),
                   f"{p['output_pixels'] / 1e6:.3g}", fmt_macs(p.get("macs")), fmt_ms(p.get("latency_ms"))]
            if backward:
                row.append(fmt_ms(p.get("forward_backward_latency_ms")))
            row.append(fmt_bytes(p.get("peak_memory_bytes")))
            if backward:
                row.append(fmt_bytes(p.get("forward_backward_peak_memory_bytes")))
            row += [fmt_rate(roof["achieved_gflops"]) if roof else "-", fmt_roof(roof),
                    Text("ok", style="green") if p["status"] == "ok" else Text(short(p.get("error") or p["status"]),
                                                                               style="red")]
            points.add_row(*row)
        points.add_section()
    fits = Table(title="growth in output pixels: time ~ pixels^k, memory ~ pixels^k (least squares on log-log axes)",
                 title_justify="left")
    fit_columns = ["series", "points", "k time"] + (["k fwd+bwd time"] if backward else []) + ["k memory"] + \
                  (["k fwd+bwd memory"] if backward else []) + ["series ended"]
    for name in fit_columns:
        fits.add_column(name, justify="left" if name in ("series", "series ended") else "right")
    for series in report.get("series", []):
        f = series.get("fits") or {}
        row = [series["label"], str(sum(p["status"] == "ok" for p in series["points"])), fmt_fit(f.get("time_ms"))]
        if backward:
            row.append(fmt_fit(f.get("fwd_bwd_time_ms")))
        row.append(fmt_fit(f.get("peak_memory_bytes")))
        if backward:
            row.append(fmt_fit(f.get("fwd_bwd_peak_memory_bytes")))
        row.append(short(series.get("stop_reason", ""), 70))
        fits.add_row(*row)
    return points, fits
