"""``lda-bench sweep``: how each upsampler's cost grows with its input, against the machine's limits.

For every upsampler (and backend) a *series* of input sizes is measured, smallest first, as
``profile`` measures one case (latency, peak memory, MACs, optionally forward + backward). The
default sizes are the four FPN top-down steps of an 800x1333 COCO image (13x21 ... 104x168),
then onward by factors of 2 in pixels (147x238, 208x336, ...). A series ends when the sizes run
out, when the next point is predicted to exceed the memory or time budget (from the growth fitted
so far), or when a point runs out of memory (recorded as ``oom``).

Per series, the exponent of time and of memory in the number of output pixels is fitted by least
squares on log-log axes (:func:`lda_bench.core.stats.power_law_fit`), with its standard error.
Per point, the roofline (:mod:`.roofline`): the machine's matmul rate and memory bandwidth are
measured in the same run, on the same device and thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import upsamplers
from lda_bench.core import environment, reports
from lda_bench.core.devices import resolve_device, resolve_dtype
from lda_bench.core.errors import EXIT_FAILED, EXIT_OK, UsageError
from lda_bench.core.options import parse_pair, split_list
from lda_bench.core.signals import interrupted_exit_code
from lda_bench.core.stats import power_law_fit

from .cases import Case, backends_for, check_cases, expand_upsamplers, input_output_bytes
from .roofline import case_roofline, measure_limits
from .runner import Settings, count_case_macs_on_meta, mac_key, measure_case, run_case

FPN_STEPS = [(13, 21), (26, 42), (52, 84), (104, 168)]  # an 800x1333 image padded to 832x1344
MAX_DEFAULT_POINTS = 12
GROWTH = {"time_ms": "latency_ms", "fwd_bwd_time_ms": "forward_backward_latency_ms",
          "peak_memory_bytes": "peak_memory_bytes", "fwd_bwd_peak_memory_bytes": "forward_backward_peak_memory_bytes"}


def default_sizes(count: int = MAX_DEFAULT_POINTS) -> list[tuple[int, int]]:
    """The FPN steps, then 104x168 scaled by sqrt(2) per step (2x the pixels each time)."""
    sizes = list(FPN_STEPS)
    base_h, base_w = FPN_STEPS[-1]
    k = 1
    while len(sizes) < count:
        factor = math.sqrt(2) ** k
        sizes.append((round(base_h * factor), round(base_w * factor)))
        k += 1
    return sizes[:count]


def parse_sizes(sizes: str | list[str] | list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """``"13x21,26x42"`` -> [(13, 21), (26, 42)] (each HxW), sorted by pixels."""
    if sizes is None:
        return None
    if isinstance(sizes, list) and sizes and not isinstance(sizes[0], str):
        pairs = [parse_pair(s, "--sizes", "HxW[,HxW...] with positive integers") for s in sizes]  # type: ignore[arg-type]
    else:
        items = split_list(sizes) or []  # type: ignore[arg-type]
        if not items:
            raise UsageError("--sizes needs at least one HxW")
        pairs = [parse_pair(s, "--sizes", "HxW[,HxW...] with positive integers") for s in items]
    return sorted(dict.fromkeys(pairs), key=lambda hw: hw[0] * hw[1])


def fit(points: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Exponent of ``key`` (a latency or memory field) in output pixels over the ok points."""
    xs, ys = [], []
    for point in points:
        value = point.get(GROWTH[key])
        value = value.get("median") if isinstance(value, dict) else value
        if point["status"] == "ok" and value:
            xs.append(point["output_pixels"])
            ys.append(value)
    if len(set(xs)) < 2:
        return None
    exponent, stderr, prefactor = power_law_fit(xs, ys)
    return {"exponent": exponent, "stderr": stderr, "prefactor": prefactor, "points": len(xs)}


def predicted(points: list[dict[str, Any]], key: str, pixels: int) -> float | None:
    """``key`` at ``pixels`` from the fit so far (linear growth from the last point if one point)."""
    ok = [p for p in points if p["status"] == "ok" and p.get(GROWTH[key])]
    if not ok:
        return None
    last = ok[-1]
    value = last[GROWTH[key]]
    value = value.get("median") if isinstance(value, dict) else value
    fitted = fit(points, key)
    exponent = fitted["exponent"] if fitted else 1.0
    return value * (pixels / last["output_pixels"]) ** max(exponent, 0.0)


@dataclass
class Budget:
    memory_bytes: int
    time_s: float

    def stop_reason(self, points: list[dict[str, Any]], next_pixels: int, next_tensor_bytes: int = 0) -> str | None:
        """Why the series should not measure the next size (``next_tensor_bytes``: its inputs and
        output alone), or None."""
        memory = max(filter(None, (predicted(points, k, next_pixels) for k in
                                   ("peak_memory_bytes", "fwd_bwd_peak_memory_bytes"))), default=None)
        memory = max(memory or 0, next_tensor_bytes) or None
        if memory is not None and memory > self.memory_bytes:
            return (f"memory budget: the next size is predicted to need {memory / 2**30:.2f} GiB "
                    f"> {self.memory_bytes / 2**30:.2f} GiB")
        seconds = max(filter(None, (predicted(points, k, next_pixels) for k in ("time_ms", "fwd_bwd_time_ms"))),
                      default=None)
        if seconds is not None and seconds / 1e3 > self.time_s:
            return f"time budget: the next size is predicted to take {seconds / 1e3:.1f} s per call > {self.time_s:g} s"
        return None


def default_memory_budget(device: str) -> int:
    """Half the device's memory (CUDA) or of the machine's (CPU)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory // 2
    total = environment.collect_environment().get("memory_bytes") or 8 * 2**30
    return total // 2


@dataclass
class SweepResult:
    report: dict[str, Any]
    path: Path | None
    interrupted: bool = False
    write_error: str | None = None  # the report could not be written (the measurements are in ``report``)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [p for s in self.report["series"] for p in s["points"] if p["status"] not in ("ok", "oom")]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return interrupted_exit_code()
        return EXIT_FAILED if self.failed or self.write_error else EXIT_OK


@dataclass
class SeriesPlan:
    upsampler: str
    options: dict[str, Any]
    backend: str | None
    cases: list[Case] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.upsampler + (f" ({self.backend})" if self.backend else "")


def plan_series(upsampler: str | list[str], options: dict[str, Any] | None, backend: str | list[str] | None,
                sizes: list[tuple[int, int]], channels: int, batch: int, device: str, dtype: str) -> list[SeriesPlan]:
    """One series per upsampler and backend, each with a case per size."""
    plans = []
    for name in expand_upsamplers(split_list(upsampler) or []):
        spec = upsamplers.get_spec(name)
        for chosen in backends_for(name, split_list(backend)):
            opts = dict(options or {})
            if chosen is not None:
                opts["backend"] = chosen
            plan = SeriesPlan(name, opts, chosen)
            for h, w in sizes:
                plan.cases.append(Case(upsampler=name, options=opts, label=f"{h}x{w}", batch=batch, channels=channels,
                                       height=h, width=w, scale=2, dtype=dtype, device=device,
                                       needs_guide=spec.needs_guide))
            plans.append(plan)
    if not plans:
        raise UsageError("no upsampler given; use --upsampler NAME[,NAME...] or all")
    return plans


def sweep(
    upsampler: str | list[str] = "lda_aqu",
    *,
    options: dict[str, Any] | None = None,
    backend: str | list[str] | None = None,
    sizes: str | list[str] | list[tuple[int, int]] | None = None,
    channels: int = 256,
    batch: int = 1,
    device: str = "auto",
    dtype: str = "fp32",
    backward: bool = False,
    threads: int | None = None,
    repeats: int = 5,
    min_time: float = 0.5,
    max_time: float = 30.0,
    memory_budget: int | None = None,
    time_budget: float = 10.0,
    output: str | Path | None = None,
    save: bool = True,
    force: bool = False,
    command: str | None = None,
    on_cases: Callable[[list[Case]], None] | None = None,
    on_start: Callable[[Case], None] | None = None,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Measure every upsampler over growing input sizes (see the module docstring); the report."""
    if channels < 1 or batch < 1 or repeats < 1:
        raise UsageError(f"--channels, --batch and --repeats must be positive, got {channels}, {batch}, {repeats}")
    if min_time < 0 or max_time <= 0 or time_budget <= 0:
        raise UsageError("--min-time must be >= 0 and --max-time, --time-budget positive")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    resolve_dtype(dtype)
    device = resolve_device(device)
    chosen_sizes = parse_sizes(sizes) or default_sizes()
    plans = plan_series(upsampler, options, backend, chosen_sizes, channels, batch, device, dtype)
    check_cases([plan.cases[0] for plan in plans])  # options, and the smallest size must fit at all
    budget = Budget(memory_budget if memory_budget is not None else default_memory_budget(device), time_budget)
    if budget.memory_bytes <= 0:
        raise UsageError(f"--memory-budget must be positive, got {budget.memory_bytes}")
    path: Path | None = None
    if save:
        path = reports.ensure_writable(output if output is not None else reports.default_report_path("sweep"), force)
    settings = Settings(repeats=repeats, min_time=min_time, max_time=max_time, backward=backward,
                        metrics=("params", "flops", "latency", "memory"))
    report = environment.report_header("sweep", device, command)
    report["settings"] = {**settings.as_dict(), "threads": torch.get_num_threads(), "sizes": [list(s) for s in
                          chosen_sizes], "channels": channels, "batch": batch, "dtype": dtype, "device": device,
                          "memory_budget_bytes": budget.memory_bytes, "time_budget_s": budget.time_s,
                          "mac_counter": "dispatch on meta tensors (same policy as profile)"}
    limits = measure_limits(device, [dtype])
    report["machine"] = {device: limits.as_dict()}
    report["series"] = []
    if on_cases:
        on_cases([c for plan in plans for c in plan.cases])
    mac_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
    interrupted = False

    def measure(case: Case, cache: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
        key = mac_key(case)
        if key not in cache:
            cache[key] = count_case_macs_on_meta(case, settings)
        return measure_case(case, settings, cache)

    for plan in plans:
        series: dict[str, Any] = {"upsampler": plan.upsampler, "options": plan.options, "backend": plan.backend,
                                  "label": plan.label, "points": [], "stop_reason": "sizes exhausted"}
        report["series"].append(series)
        for index, case in enumerate(plan.cases):
            if index:
                reason = budget.stop_reason(series["points"], case.output_pixels, input_output_bytes(case))
                if reason:
                    series["stop_reason"] = reason
                    break
            if on_start:
                on_start(case)
            try:
                record = run_case(case, measure, mac_cache)
            except KeyboardInterrupt:
                interrupted = True
                series["stop_reason"] = "interrupted"
                break
            record["output_pixels"] = case.output_pixels
            record["roofline"] = case_roofline(record, limits)
            series["points"].append(record)
            if on_done:
                on_done(case, record)
            if record["status"] != "ok":
                series["stop_reason"] = f"{record['status']} at {case.label}: {record['error']}"
                break
        if series["points"] and series["points"][-1]["status"] == "ok" and series["stop_reason"] != "interrupted":
            resolved = series["points"][-1].get("backend")
            if resolved:
                series["label"] = f"{plan.upsampler} ({resolved})"
        series["fits"] = {key: fit(series["points"], key) for key in GROWTH}
        if interrupted:
            break
    report["interrupted"] = interrupted
    write_error = None
    if path is not None:
        try:
            reports.write_report(report, path, force=force)
        except reports.OutputWriteError as exc:
            path, write_error = None, str(exc)
    return SweepResult(report, path, interrupted, write_error)
