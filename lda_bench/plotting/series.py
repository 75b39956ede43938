"""What the figures show, taken out of sweep and profile reports (plain data; no matplotlib)."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lda_bench.core.errors import UsageError
from lda_bench.core.reports import load_report
from lda_bench.core.stats import power_law_fit

PLOTTABLE = ("sweep", "profile")


@dataclass
class Point:
    id: str
    pixels: int
    time_ms: float | None
    fwd_bwd_ms: float | None
    memory_bytes: int | None
    fwd_bwd_memory_bytes: int | None
    roofline: dict[str, Any] | None
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class Series:
    label: str
    points: list[Point]

    def exponent(self, attribute: str) -> tuple[float, float | None] | None:
        """Fitted exponent (and its standard error) of ``attribute`` in output pixels."""
        pairs = [(p.pixels, getattr(p, attribute)) for p in self.points if getattr(p, attribute)]
        if len({x for x, _ in pairs}) < 2:
            return None
        k, stderr, _ = power_law_fit([x for x, _ in pairs], [y for _, y in pairs])
        return k, stderr


@dataclass
class ReportData:
    path: Path
    kind: str
    title: str
    series: list[Series]
    machine: dict[str, Any]  # device -> measured limits


def _point(record: dict[str, Any], pixels: int) -> Point:
    latency = record.get("latency_ms") or {}
    both = record.get("forward_backward_latency_ms") or {}
    return Point(record["id"], pixels, latency.get("median"), both.get("median"), record.get("peak_memory_bytes"),
                 record.get("forward_backward_peak_memory_bytes"), record.get("roofline"),
                 list(latency.get("samples") or []))


def _case_pixels(record: dict[str, Any]) -> int | None:
    shape = record.get("output_shape")
    return None if not shape else shape[0] * shape[-2] * shape[-1]


def _label(record: dict[str, Any]) -> str:
    options = {k: v for k, v in (record.get("options") or {}).items() if k != "backend"}
    text = str(record.get("upsampler") or "?") + (f" ({record['backend']})" if record.get("backend") else "")
    return text + ("" if not options else " " + ",".join(f"{k}={v}" for k, v in sorted(options.items())))


def load(path: str | Path) -> ReportData:
    """A sweep or profile report as series of points (ok points only, by output pixels)."""
    report = load_report(path)
    kind = report.get("kind")
    if kind not in PLOTTABLE:
        raise UsageError(f"{path} is a {kind!r} report; lda-bench plot draws sweep and profile reports")
    groups: dict[str, list[Point]] = {}
    if kind == "sweep":
        for s in report.get("series", []):
            groups[s["label"]] = [_point(p, p["output_pixels"]) for p in s["points"] if p["status"] == "ok"]
    else:
        for record in report.get("cases", []):
            pixels = _case_pixels(record)
            if record["status"] == "ok" and pixels:
                groups.setdefault(_label(record), []).append(_point(record, pixels))
    series = [Series(label, sorted(points, key=lambda p: p.pixels)) for label, points in groups.items() if points]
    settings = report.get("settings") or {}
    env = report.get("env") or {}
    devices = sorted({str(k) for k in (report.get("machine") or {})}) or [str(settings.get("device", "?"))]
    dtypes = sorted({str(settings["dtype"])} if "dtype" in settings else
                    {str(c.get("dtype")) for c in report.get("cases", [])}) or ["?"]
    title = (f"{', '.join(devices)} ({env.get('device_name', env.get('cpu_model', ''))}) · {', '.join(dtypes)} · "
             f"{settings.get('threads', env.get('threads'))} threads")
    return ReportData(Path(path), kind, title, series, report.get("machine") or {})


def bootstrap_ratio_ci(a: list[float], b: list[float], level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(b) / median(a), resampling each sample on its own."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(b, k=len(b))) / statistics.median(rng.choices(a, k=len(a)))
                    for _ in range(resamples))
    tail = (1 - level) / 2
    return ratios[int(tail * resamples)], ratios[min(resamples - 1, int((1 - tail) * resamples))]


@dataclass
class Ratio:
    id: str
    label: str
    ratio: float
    low: float
    high: float


def ratios(a: ReportData, b: ReportData) -> list[Ratio]:
    """Per case matched by id: median time of ``b`` over ``a`` with its bootstrap interval."""
    a_points = {p.id: (s.label, p) for s in a.series for p in s.points}
    out = []
    for s in b.series:
        for p in s.points:
            if p.id in a_points and p.samples_ms and a_points[p.id][1].samples_ms and p.time_ms:
                base = a_points[p.id][1]
                low, high = bootstrap_ratio_ci(base.samples_ms, p.samples_ms)
                out.append(Ratio(p.id, f"{s.label} {p.id.split('/')[1]}", p.time_ms / base.time_ms, low, high))
    return out
