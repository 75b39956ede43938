"""The regression gate's verdict table."""

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

    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    for v in verdicts:
        table.add_row(v.label, v.upsampler, v.backend or "-", num(v.baseline_ms), num(v.current_ms),
                      num(v.baseline_ratio), num(v.current_ratio), fmt_ratio(v.change),
                      "-" if v.p_value is None else f"{v.p_value:.1e}",
                      Text(v.verdict, style=VERDICT_STYLES.get(v.verdict, "")), short(v.reason, 60))
    return table
