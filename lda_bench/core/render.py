"""Terminal output of every command: one Console pair, number formats, message lines.

Tables go to stdout (:data:`console`), everything else (progress, notes, warnings, errors) to
stderr (:data:`err_console`), so ``--json`` output and tables stay clean when piped. Piped or
captured output gets a wide console instead of Rich's 80 columns, so tables do not wrap into
unreadable cells; message lines never wrap (``soft_wrap``), so each stays one line.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 160

console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def print_message(label: str, message: str, style: str = "") -> None:
    """``label: message`` on stderr as one line (``label`` styled, the message verbatim)."""
    prefix = f"[{style}]{label}:[/] " if style else f"{label}: "
    err_console.print(prefix + escape(message), highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    print_message("error", message, "bold red")


def print_warning(message: str) -> None:
    print_message("warning", message, "yellow")


def print_note(message: str) -> None:
    print_message("note", message, "yellow")


def print_info(message: str) -> None:
    """A plain line on stderr (e.g. where a report was written)."""
    err_console.print(escape(message), highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    """``text`` with Rich markup characters escaped (file names may hold ``[``)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


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


def short(text: str, width: int = 40) -> str:
    text = text.splitlines()[0] if text else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def key_value_table(title: str, items: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in items:
        table.add_row(key, "-" if value is None else str(value))
    return table
