"""``lda-bench plot``: figures of sweep and profile reports (matplotlib, an optional extra).

* ``time_vs_pixels`` and ``memory_vs_pixels``: log-log, one line per upsampler/backend, the fitted
  exponent in the legend (forward + backward with hollow markers where measured);
* ``roofline``: the measured ceilings and one point per case;
* ``ratio`` (given two or more reports): per matched case, the median time of the second report
  over the first with its 95% bootstrap interval.

Each figure is written as PNG and SVG.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from lda_bench.core.errors import UsageError
from lda_bench.core.reports import ensure_writable, write_atomic

from . import figures
from .series import load, ratios

INSTALL_HINT = "lda-bench plot needs matplotlib: pip install 'lda-bench[plot]' (or pip install matplotlib)"
FORMATS = ("png", "svg")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_reports(paths: Sequence[str | Path], out_dir: str | Path, force: bool = False) -> list[Path]:
    """Draw the figures of ``paths`` (sweep or profile reports) into ``out_dir``; the files written."""
    if not paths:
        raise UsageError("give at least one report: lda-bench plot REPORT.json [MORE.json ...] -o DIR")
    data = [load(p) for p in paths]
    plt = _pyplot()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; give a folder for the figures")
    drawn: dict[str, Any] = {
        "time_vs_pixels": figures.growth_figure(plt, data, "time_ms", "fwd_bwd_ms", "time per call (ms)", 1.0,
                                                "time per call against output pixels"),
        "memory_vs_pixels": figures.growth_figure(plt, data, "memory_bytes", "fwd_bwd_memory_bytes",
                                                  "peak memory per call (MiB)", 1 / 2**20,
                                                  "peak memory per call against output pixels"),
        "roofline": figures.roofline_figure(plt, data),
    }
    if len(data) >= 2:
        matched = ratios(data[0], data[1])
        if not matched:
            raise UsageError(f"{data[0].path} and {data[1].path} share no measured case to compare")
        drawn["ratio"] = figures.ratio_figure(plt, matched, data[0], data[1])
    targets = [out / f"{name}.{fmt}" for name in drawn for fmt in FORMATS]
    for target in targets:
        ensure_writable(target, force, "-o folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in drawn.items():
        for fmt in FORMATS:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=150 if fmt == "png" else None)
            written.append(write_atomic(buffer.getvalue(), out / f"{name}.{fmt}", force))
        plt.close(fig)
    return written
