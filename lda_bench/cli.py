"""The ``lda-bench`` command line (Typer). Thin: parse, call library functions, render."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

import upsamplers

app = typer.Typer(
    help="Profile and evaluate feature upsamplers (LDA-AQU and its peers).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.command("list")
def list_command() -> None:
    """List the registered upsamplers."""
    table = Table(title="Registered upsamplers")
    for col in ("name", "guide", "params @ C=256", "backends", "reference"):
        table.add_column(col)
    for spec in upsamplers.available():
        params = sum(p.numel() for p in upsamplers.build(spec.name, 256).parameters())
        table.add_row(spec.name, "yes" if spec.needs_guide else "no", f"{params:,}", ", ".join(spec.backends),
                      spec.reference)
    console.print(table)


@app.command()
def profile(upsampler: str = typer.Option("lda_aqu", help="Registered name or package.module:factory.")) -> None:
    """Profile an upsampler (parameters for now)."""
    module = upsamplers.build(upsampler, 256)
    console.print(f"{upsampler}: {sum(p.numel() for p in module.parameters()):,} parameters at C=256")


def main() -> None:
    app()
