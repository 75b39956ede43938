"""The regression gate's verdict tables (committed-baseline mode and A/B mode)."""

from __future__ import annotations

from typing import Any, Iterable

from rich.table import Table
from rich.text import Text

from lda_bench.core.render import fmt_ratio, short

VERDICT_STYLES = {"faster": "green", "same": "", "slower": "bold red", "not comparable": "yellow",
                  "too noisy": "yellow"}


def verdict_table(verdicts: Iterable[Any], baseline: str) -> Table:
    """The gate's decision per case: baseline and current times and ratios, change, verdict."""
    table = Table(title=f"lda-bench regress · baseline {baseline}", title_justify="left")
    for col, justify in (("step", "left"), ("upsampler", "left"), ("backend", "left"), ("baseline ms", "right"),
                         ("now ms", "right"), ("ratio base", "right"), ("ratio now", "right"), ("change", "right"),
                         ("p", "right"), ("verdict", "left"), ("why", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for v in verdicts:
        table.add_row(v.label, v.upsampler, v.backend or "-", _num(v.baseline_ms), _num(v.current_ms),
                      _num(v.baseline_ratio), _num(v.current_ratio), fmt_ratio(v.change),
                      "-" if v.p_value is None else f"{v.p_value:.1e}",
                      Text(v.verdict, style=VERDICT_STYLES.get(v.verdict, "")), short(v.reason, 60))
    return table


def pair_table(verdicts: Iterable[Any], title: str) -> Table:
    """The A/B gate's decision per case: both sides' times, the ratio with its interval, verdict."""
    table = Table(title=title, title_justify="left")
    for col, justify in (("step", "left"), ("upsampler", "left"), ("backend", "left"), ("base ms", "right"),
                         ("candidate ms", "right"), ("change", "right"), ("95% CI", "right"), ("p", "right"),
                         ("verdict", "left"), ("why", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for v in verdicts:
        interval = "-" if v.ci_low is None or v.ci_high is None else f"{v.ci_low:.2f}-{v.ci_high:.2f}"
        table.add_row(v.label, v.upsampler, v.backend or "-", _num(v.baseline_ms), _num(v.current_ms),
                      fmt_ratio(v.change), interval, "-" if v.p_value is None else f"{v.p_value:.1e}",
                      Text(v.verdict, style=VERDICT_STYLES.get(v.verdict, "")), short(v.reason, 60))
    return table


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"
