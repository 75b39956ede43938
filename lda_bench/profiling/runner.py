"""Measuring cases: params, MACs, latency, throughput, memory and an accuracy check."""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

from lda_bench.core.devices import DTYPES

from .cases import Case, backend_of, seeded_module
from .flops import count_macs
from .memory import peak_memory_bytes
from .suites import METRICS
from .timing import measure_latency

COUNTER_CHOICES = ("fvcore", "dispatch", "both")


@dataclass
class Settings:
    """How to measure (the same for every case of a run)."""

    repeats: int = 10
    min_time: float = 1.0
    max_time: float | None = 60.0
    warmup: int = 2
    backward: bool = False
    counter: str = "fvcore"
    elementwise: str = "count"
    metrics: tuple[str, ...] = METRICS
    rounds: int = 1  # > 1: latency in interleaved rounds (lda_bench.profiling.rounds)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mac_key(case: Case) -> tuple[Any, ...]:
    opts = tuple(sorted((k, repr(v)) for k, v in case.options.items() if k != "backend"))
    return case.upsampler, opts, tuple(case.input_shape), tuple(case.guide_shape or ()), case.scale


def count_case_macs(case: Case, settings: Settings) -> dict[str, Any]:
    """MACs on a CPU float32 copy with the reference backend: the count depends on neither dtype,
    device nor backend, and tracing a CUDA-only kernel on the CPU would fail."""
    cpu_case = dataclasses.replace(case, device="cpu", dtype="fp32")
    override = {"backend": "reference"} if "backend" in case.options else {}
    module = seeded_module(cpu_case, **override)
    inputs = cpu_case.inputs()
    primary = "dispatch" if settings.counter == "dispatch" else "fvcore"
    result = count_macs(module, inputs, primary, settings.elementwise).as_dict()
    if settings.counter == "both":
        other = count_macs(module, inputs, "dispatch", settings.elementwise)
        result["macs_dispatch"] = other.macs
        result["counters_agree"] = other.macs == result["macs"]
    return result


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []


def _accuracy(case: Case, output: Any, reference: Any | None) -> dict[str, Any]:
    """Shape, dtype and finiteness of the output; the distance to the reference backend if given."""
    floats = [t for t in _tensors(output) if t.is_floating_point()]
    check: dict[str, Any] = {
        "shape_ok": case.output_shape is None or list(output.shape) == case.output_shape,
        "dtype_ok": all(t.dtype == DTYPES[case.dtype] for t in floats),
        "finite": all(bool(torch.isfinite(t).all()) for t in floats),
    }
    if reference is not None and check["shape_ok"]:
        pairs = zip(_tensors(output), _tensors(reference))
        check["max_abs_diff_vs_reference"] = max(
            (float((a.double() - b.double()).abs().max()) for a, b in pairs if a.numel()), default=0.0)
    return check


def static_fields(case: Case, module: torch.nn.Module, settings: Settings,
                  mac_cache: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
    """What a case's module is, without running it: the backend that will run (if it has one),
    trainable parameters and the MAC count (if ``settings.metrics`` ask for them)."""
    record: dict[str, Any] = {}
    metrics = set(settings.metrics)
    backend = backend_of(module)
    if backend is not None:
        from upsamplers import ops

        record["backend"] = ops.resolve_backend(backend, torch.device(case.device).type)
    if "params" in metrics:
        record["params"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if "flops" in metrics:
        key = mac_key(case)
        if key not in mac_cache:
            mac_cache[key] = count_case_macs(case, settings)
        record.update(mac_cache[key])
    return record


def throughput(case: Case, median_ms: float) -> dict[str, float | None]:
    """Output megapixels and images per second at a median latency of ``median_ms``."""
    seconds = median_ms / 1e3
    return {
        "mpix_per_s": case.output_pixels / 1e6 / seconds if seconds > 0 else None,
        "images_per_s": case.batch / seconds if seconds > 0 else None,
    }


def measure_case(case: Case, settings: Settings, mac_cache: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
    """Measure one case. Exceptions propagate; :func:`run_cases` records them."""
    return measure_prepared(case, seeded_module(case), case.inputs(), settings, mac_cache)


def measure_prepared(case: Case, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], settings: Settings,
                     mac_cache: dict[tuple[Any, ...], dict[str, Any]], time_latency: bool = True) -> dict[str, Any]:
    """Measure one case on its module and inputs; without ``time_latency`` everything but the
    latency metric (:mod:`.rounds` times it afterwards)."""
    metrics = set(settings.metrics)
    record = static_fields(case, module, settings, mac_cache)
    with torch.inference_mode():
        output = module(*inputs)
        # What any implementation must move at least once: inputs, outputs and parameters (roofline).
        record["compulsory_bytes"] = sum(t.numel() * t.element_size() for t in (*inputs, *_tensors(output))) + sum(
            p.numel() * p.element_size() for p in module.parameters())
        if "accuracy" in metrics:
            reference = None
            if record.get("backend") not in (None, "reference"):
                reference = seeded_module(case, backend="reference")(*inputs)
            record["accuracy"] = _accuracy(case, output, reference)
        del output
        if "latency" in metrics and time_latency:
            stats = measure_latency(lambda: module(*inputs), case.device, min_time=settings.min_time,
                                    repeats=settings.repeats, warmup=settings.warmup, max_time=settings.max_time)
            record["latency_ms"] = stats.as_dict()
            record["throughput"] = throughput(case, stats.median)
        if "memory" in metrics:
            record["peak_memory_bytes"], record["memory_method"] = peak_memory_bytes(lambda: module(*inputs),
                                                                                     case.device)
    if settings.backward and "latency" in metrics:
        step = backward_step(case, module)
        if time_latency:
            stats = measure_latency(step, case.device, min_time=settings.min_time, repeats=settings.repeats,
                                    warmup=settings.warmup, max_time=settings.max_time)
            record["forward_backward_latency_ms"] = stats.as_dict()
        if "memory" in metrics:
            record["forward_backward_peak_memory_bytes"] = peak_memory_bytes(step, case.device)[0]
    return record


def backward_step(case: Case, module: torch.nn.Module) -> Callable[[], None]:
    """One forward + backward of ``module`` on fresh leaf inputs: into a fixed random gradient of
    the output, or for a whole model from the sum of everything it returns."""
    inputs = case.inputs(requires_grad=True)
    grad_out = None
    if case.output_shape is not None:
        grad_out = torch.randn(case.output_shape, generator=torch.Generator().manual_seed(1)).to(inputs[0])

    def step() -> None:
        module.zero_grad(set_to_none=True)
        for t in inputs:
            t.grad = None
        output = module(*inputs)
        if grad_out is not None:
            output.backward(grad_out)
        else:  # a model: back-propagate the sum of everything it returns
            sum(t.float().sum() for t in _tensors(output) if t.is_floating_point()).backward()

    return step


def case_record(case: Case) -> dict[str, Any]:
    """The descriptive fields of a case (before any measurement)."""
    return {
        "id": case.id,
        "label": case.label,
        "upsampler": case.upsampler,
        "options": dict(case.options),
        "backend": None,
        "input_shape": case.input_shape,
        "guide_shape": case.guide_shape,
        "output_shape": case.output_shape,
        "model": case.model,
        "scale": case.scale,
        "count": case.count,
        "dtype": case.dtype,
        "device": case.device,
        "params": None,
        "macs": None,
        "flops": None,
        "uncounted_ops": None,
        "latency_ms": None,
        "throughput": None,
        "peak_memory_bytes": None,
        "status": "pending",
        "error": None,
    }


MeasureFn = Callable[[Case, dict[tuple[Any, ...], dict[str, Any]]], dict[str, Any]]


def run_case(case: Case, measure: MeasureFn, mac_cache: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
    """One case's record: its fields from ``measure``, status ``ok``, or ``error`` with the error
    (a failing case never raises, Ctrl-C does)."""
    record = case_record(case)
    try:
        record.update(measure(case, mac_cache))
        record["status"] = "ok"
        accuracy = record.get("accuracy") or {}
        problems = [k for k in ("shape_ok", "dtype_ok", "finite") if accuracy.get(k) is False]
        if problems:
            record["status"] = "error"
            record["error"] = f"accuracy check failed: {', '.join(problems)}"
    except Exception as exc:  # noqa: BLE001 - a failing case must not stop the run
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}".strip()
        record["traceback"] = traceback.format_exc(limit=6)
        if is_out_of_memory(exc):
            record["status"] = "oom"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return record


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure to allocate."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def run_cases(
    cases: list[Case],
    settings: Settings,
    on_start: Callable[[Case], None] | None = None,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
    measure: MeasureFn | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Measure every case; a failing case is recorded with its error and the others go on.

    ``measure(case, mac_cache)`` gives a case's fields (default: :func:`measure_case` with
    ``settings``; the regression gate passes its paired timing). Returns (records, interrupted).
    On Ctrl-C the cases finished so far are returned with interrupted=True; the case in progress
    is dropped.
    """
    if measure is None:
        def measure(case: Case, mac_cache: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
            return measure_case(case, settings, mac_cache)
    records: list[dict[str, Any]] = []
    mac_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
    for case in cases:
        if on_start:
            on_start(case)
        try:
            record = run_case(case, measure, mac_cache)
        except KeyboardInterrupt:
            return records, True
        records.append(record)
        if on_done:
            on_done(case, record)
    return records, False


def count_case_macs_on_meta(case: Case, settings: Settings) -> dict[str, Any]:
    """MACs of ``case`` counted by the dispatch counter on meta tensors: the same count as
    :func:`count_case_macs` (checked in the tests for every registered upsampler), without running
    anything, so it costs nothing at sizes where running the reference would take minutes."""
    cpu_case = dataclasses.replace(case, device="cpu", dtype="fp32")
    override = {"backend": "reference"} if "backend" in case.options else {}
    module = seeded_module(cpu_case, **override).to("meta")
    inputs = tuple(t.to("meta") for t in _shaped_like(cpu_case))
    result = count_macs(module, inputs, "dispatch", settings.elementwise).as_dict()
    result["counter"] = "dispatch (meta tensors)"
    return result


def _shaped_like(case: Case) -> tuple[torch.Tensor, ...]:
    """Empty tensors of the case's input shapes (no random numbers drawn)."""
    shapes = [case.input_shape] + ([case.guide_shape] if case.guide_shape else [])
    return tuple(torch.empty(shape) for shape in shapes)
