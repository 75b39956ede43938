"""``lda-bench list`` and ``lda-bench env``: what is registered, and what the machine is."""

from __future__ import annotations

import typer

from lda_bench.core import reports
from lda_bench.core.environment import describe_environment
from lda_bench.core.render import console, fmt_int, key_value_table, print_warning
from lda_bench.profiling.catalog import list_upsamplers

from .common import fail


def list_command(
    channels: int = typer.Option(256, help="Channel count used to count parameters."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the registered upsamplers: name, guide, parameters, backends, reference.

    Example: lda-bench list
    """
    if channels < 1:
        raise fail(f"--channels must be positive, got {channels}")
    rows = list_upsamplers(channels)
    if as_json:
        print(reports.dumps({"channels": channels, "upsamplers": rows}), end="")
        return
    from rich.table import Table

    table = Table(title=f"Registered upsamplers (params at C={channels})", title_justify="left")
    for col in ("name", "guide", "params", "backends", "reference"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for row in rows:
        backends = ", ".join(b if b in row["backends_available_here"] else f"[dim]{b} (n/a here)[/]"
                             for b in row["backends"])
        table.add_row(row["name"], "yes" if row["needs_guide"] else "no", fmt_int(row["params"]), backends,
                      row["reference"])
    console.print(table)


def env_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the environment a report would record, and what makes timings unreliable now.

    Example: lda-bench env
    """
    described = describe_environment()
    if as_json:
        print(reports.dumps(described), end="")
        return
    info = described["env"]
    items = [(k, v) for k, v in info.items() if k != "thread_env"]
    items.append(("thread env", info["thread_env"] or "(none set)"))
    items.append(("git", described["git"]))
    console.print(key_value_table("lda-bench env", items))
    if described["warnings"]:
        for warning in described["warnings"]:
            print_warning(warning)
    else:
        console.print("[green]no conditions found that make timings unreliable[/]")
