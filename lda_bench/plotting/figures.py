"""The figures of ``lda-bench plot`` (matplotlib, drawn off-screen with the Agg backend).

Every series gets its own marker and line style as well as a colour, so the figures stay
readable in greyscale; axes carry units; titles name device, dtype and thread count.
"""

from __future__ import annotations

from typing import Any, Sequence

from .series import Ratio, ReportData

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
LINESTYLES = ("-", "--", "-.", ":")
# Okabe & Ito's colour-blind safe palette; grey levels differ too.
COLOURS = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")


def _style(i: int) -> dict[str, Any]:
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "color": COLOURS[i % len(COLOURS)]}


def _k(fitted: tuple[float, float | None] | None) -> str:
    if fitted is None:
        return ""
    k, stderr = fitted
    return f", k = {k:.2f}" + ("" if stderr is None else f" ± {stderr:.2f}")


def _series(reports: Sequence[ReportData]) -> list[tuple[str, Any]]:
    """(legend label, series) over all reports; labels carry the file name when there are several."""
    many = len(reports) > 1
    return [((f"{r.path.stem}: " if many else "") + s.label, s) for r in reports for s in r.series]


def _title(reports: Sequence[ReportData], what: str) -> str:
    return f"{what}\n" + " | ".join(dict.fromkeys(r.title for r in reports))


def growth_figure(plt: Any, reports: Sequence[ReportData], attribute: str, both_attribute: str, ylabel: str,
                  scale: float, what: str) -> Any:
    """``attribute`` (and, dashed-free but hollow, the forward+backward one) against output pixels."""
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    for i, (label, series) in enumerate(_series(reports)):
        style = _style(i)
        for attr, suffix, fill in ((attribute, "", style["color"]), (both_attribute, " fwd+bwd", "white")):
            xs = [p.pixels for p in series.points if getattr(p, attr)]
            ys = [getattr(p, attr) * scale for p in series.points if getattr(p, attr)]
            if xs:
                ax.plot(xs, ys, marker=style["marker"], linestyle=style["linestyle"], color=style["color"],
                        markerfacecolor=fill, label=f"{label}{suffix}{_k(series.exponent(attr))}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output pixels per call (batch x height x width)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize="small", title="k: fitted exponent in pixels", title_fontsize="small")
    ax.set_title(_title(reports, what), fontsize="medium")
    return fig


def roofline_figure(plt: Any, reports: Sequence[ReportData]) -> Any:
    """The measured ceilings of each device and one point per measured case."""
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    intensities = [p.roofline["intensity_flop_per_byte"] for _, s in _series(reports) for p in s.points if p.roofline]
    if not intensities:
        ax.text(0.5, 0.5, "no case with FLOPs and latency to place", ha="center", transform=ax.transAxes)
        return fig
    low, high = min(intensities) / 4, max(intensities) * 4
    drawn = set()
    for r in reports:
        for device, limits in r.machine.items():
            if device in drawn:
                continue
            drawn.add(device)
            bandwidth = limits["bandwidth_gb_s"]
            for dtype, peak in sorted(limits["matmul_gflops"].items()):
                ridge = peak / bandwidth
                xs = [low, max(low, min(ridge, high)), high]
                ax.plot(xs, [min(peak, x * bandwidth) for x in xs], color="grey", linewidth=1.5,
                        linestyle="-" if dtype == "fp32" else ":")
                ax.annotate(f"{device} {dtype} matmul {peak:.0f} GFLOP/s", (high, peak), ha="right", va="bottom",
                            fontsize="x-small", color="dimgrey")
            ax.annotate(f"{device} memory {bandwidth:.1f} GB/s", (low, low * bandwidth), rotation=0, ha="left",
                        va="bottom", fontsize="x-small", color="dimgrey")
    for i, (label, series) in enumerate(_series(reports)):
        style = _style(i)
        points = [p.roofline for p in series.points if p.roofline]
        if points:
            ax.plot([q["intensity_flop_per_byte"] for q in points], [q["achieved_gflops"] for q in points],
                    marker=style["marker"], color=style["color"], linestyle="none", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per compulsory byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize="small")
    ax.set_title(_title(reports, "roofline: measured ceilings, one point per case"), fontsize="medium")
    return fig


def ratio_figure(plt: Any, ratios: Sequence[Ratio], a: ReportData, b: ReportData) -> Any:
    """Per matched case, median time of B over A with its 95% bootstrap interval."""
    height = max(3.0, 0.28 * len(ratios) + 1.5)
    fig, ax = plt.subplots(figsize=(8, height), constrained_layout=True)
    ys = list(range(len(ratios)))
    values = [r.ratio for r in ratios]
    errors = [[r.ratio - r.low for r in ratios], [r.high - r.ratio for r in ratios]]
    ax.errorbar(values, ys, xerr=errors, fmt="o", color="black", ecolor="grey", capsize=3)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [r.label for r in ratios], fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"time ratio {b.path.stem} / {a.path.stem} (median, 95% bootstrap interval; > 1: slower)")
    ax.grid(True, axis="x", which="both", linewidth=0.3)
    ax.set_title(_title([a, b], "per-case time ratio"), fontsize="medium")
    return fig
