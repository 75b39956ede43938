"""Rich tables for the terminal (reports stay plain data; this only formats them)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from rich.table import Table
from rich.text import Text

from lda_bench.compare import CaseComparison
from lda_bench.suites import METRICS


def fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def fmt_macs(macs: int | None) -> str:
    if macs is None:
        return "-"
    if macs >= 1e9:
        return f"{macs / 1e9:.2f} G"
    if macs >= 1e6:
        return f"{macs / 1e6:.2f} M"
    if macs >= 1e3:
        return f"{macs / 1e3:.1f} K"
    return str(macs)


def fmt_ms(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    median, iqr = stats["median"], stats["iqr"]
    digits = 3 if median < 1 else (2 if median < 10 else 1)
    return f"{median:.{digits}f} ± {iqr:.{digits}f}"


def fmt_rate(value: float | None) -> str:
    """Three significant digits: 0.0143, 1.52, 236."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    if value >= 2**10:
        return f"{value / 2**10:.1f} KiB"
    return f"{value} B"


def fmt_ratio(ratio: float | None) -> Text:
    if ratio is None:
        return Text("-")
    style = "red" if ratio > 1.10 else ("green" if ratio < 0.91 else "")
    return Text(f"{ratio:.2f}x", style=style)


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
        if backward:
            columns.append(("fwd+bwd ms", "right", lambda c: fmt_ms(c.get("forward_backward_latency_ms"))))
        columns.append(("Mpix/s", "right", lambda c: fmt_rate((c.get("throughput") or {}).get("mpix_per_s"))))
    if "memory" in metrics:
        columns.append(("peak mem", "right", lambda c: fmt_bytes(c.get("peak_memory_bytes"))))
    columns.append(("status", "left", lambda c: Text("ok", style="green") if c["status"] == "ok"
                    else Text(_short(c.get("error") or c["status"]), style="red")))
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


def _short(text: str, width: int = 40) -> str:
    text = text.splitlines()[0] if text else ""
    return text if len(text) <= width else text[: width - 1] + "…"


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


def key_value_table(title: str, items: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in items:
        table.add_row(key, "-" if value is None else str(value))
    return table


VERDICT_STYLES = {"faster": "green", "same": "", "slower": "bold red", "not comparable": "yellow",
                  "too noisy": "yellow"}


def verdict_table(verdicts: Iterable[Any], baseline: str) -> Table:
    """The gate's decision per case: baseline and current times and ratios, change, verdict."""
    table = Table(title=f"lda-bench regress · baseline {baseline}", title_justify="left")
    for col, justify in (("step", "left"), ("upsampler", "left"), ("backend", "left"), ("baseline ms", "right"),
                         ("now ms", "right"), ("ratio base", "right"), ("ratio now", "right"), ("change", "right"),
                         ("p", "right"), ("verdict", "left"), ("why", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]

    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    for v in verdicts:
        table.add_row(v.label, v.upsampler, v.backend or "-", num(v.baseline_ms), num(v.current_ms),
                      num(v.baseline_ratio), num(v.current_ratio), fmt_ratio(v.change),
                      "-" if v.p_value is None else f"{v.p_value:.1e}",
                      Text(v.verdict, style=VERDICT_STYLES.get(v.verdict, "")), _short(v.reason, 60))
    return table
