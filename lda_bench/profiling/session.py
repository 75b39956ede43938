"""One profiling run from options to a report: the Python form of ``lda-bench profile`` / ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from lda_bench.core import environment, reports
from lda_bench.core.devices import resolve_dtype
from lda_bench.core.errors import EXIT_FAILED, EXIT_OK, UsageError
from lda_bench.core.options import parse_pair, split_list
from lda_bench.core.signals import interrupted_exit_code

from .cases import Case, UpsamplerEntry, build_cases, build_model_cases, check_cases, expand_upsamplers
from .flops import ELEMENTWISE_POLICIES
from .roofline import case_roofline, measure_limits
from .rounds import run_cases_in_rounds
from .runner import COUNTER_CHOICES, Settings, run_cases
from .suites import METRICS, Suite, SuiteInput, load_suite

DEFAULT_SUITE = "fpn-coco"


@dataclass
class ProfileResult:
    report: dict[str, Any]
    path: Path | None
    interrupted: bool = False
    cases: list[Case] = field(default_factory=list)
    write_error: str | None = None  # the report could not be written (the measurements are in ``report``)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.report["cases"] if c["status"] != "ok"]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return interrupted_exit_code()
        return EXIT_FAILED if self.failed or self.write_error else EXIT_OK


def parse_size(size: str) -> tuple[int, int]:
    """``"104x168"`` -> (104, 168)."""
    return parse_pair(size, "--size", "HxW with positive integers (e.g. 104x168)")


def prepare_suite(
    suite: str | Path | Suite,
    size: str | None,
    channels: int | None,
    batch: int | None,
    device: str | None,
    dtype: str | None,
) -> Suite:
    """Load the suite and apply the command-line overrides."""
    loaded = suite if isinstance(suite, Suite) else load_suite(suite)
    inputs = loaded.inputs
    if channels is not None and channels < 1:
        raise UsageError(f"--channels must be positive, got {channels}")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be positive, got {batch}")
    if size is not None:
        h, w = parse_size(size)
        inputs = [SuiteInput(label=f"{h}x{w}", channels=channels or 256, height=h, width=w, batch=batch or 1)]
    else:
        inputs = [replace(i, channels=channels or i.channels, batch=batch or i.batch) for i in inputs]
    dtypes = loaded.dtypes
    if dtype is not None:
        dtypes = split_list(dtype) or []
        for d in dtypes:
            resolve_dtype(d)
    devices = loaded.devices if device is None else (split_list(device) or ["auto"])
    return replace(loaded, inputs=inputs, dtypes=dtypes, devices=devices)


def upsampler_entries(upsampler: str | list[str] | None, suite: Suite,
                      options: dict[str, Any] | None) -> list[UpsamplerEntry]:
    """The upsamplers to measure: those named (``all`` for every registered one) with ``options``,
    or, when ``upsampler`` is None, the suite's own entries with ``options`` on top of theirs."""
    if upsampler is None:
        entries = []
        for entry in suite.upsamplers:
            for name in expand_upsamplers([entry.name]):
                entries.append(UpsamplerEntry(name, {**entry.options, **(options or {})}, entry.inputs))
        return entries
    names = expand_upsamplers(split_list(upsampler) or [])
    if not names:
        raise UsageError("no upsampler given; use --upsampler NAME[,NAME...] or all")
    return [UpsamplerEntry(name, dict(options or {})) for name in names]


def profile(
    upsampler: str | list[str] | None = "lda_aqu",
    *,
    model: str | None = None,
    suite: str | Path | Suite = DEFAULT_SUITE,
    size: str | None = None,
    channels: int | None = None,
    batch: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    backend: str | list[str] | None = None,
    options: dict[str, Any] | None = None,
    backward: bool = False,
    threads: int | None = None,
    repeats: int | None = None,
    min_time: float | None = None,
    max_time: float | None = 60.0,
    rounds: int = 1,
    counter: str = "fvcore",
    elementwise: str = "count",
    metrics: str | list[str] | None = None,
    output: str | Path | None = None,
    save: bool = True,
    force: bool = False,
    command: str | None = None,
    on_start: Callable[[Case], None] | None = None,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
    on_cases: Callable[[list[Case]], None] | None = None,
    on_rounds: Callable[[int], None] | None = None,
    on_round: Callable[[Case, int], None] | None = None,
) -> ProfileResult:
    """Profile upsamplers on a suite's inputs and write a JSON report.

    ``upsampler=None`` measures the suite's own upsampler list (``lda-bench run``). With
    ``model`` (e.g. ``faster_rcnn_r50_fpn``) each upsampler is measured inside that whole model on
    its default input (or ``size``), instead of on the suite's inputs. With ``rounds`` > 1 the
    latency is timed in that many interleaved rounds, and every case gets its overhead over the
    first case of its group (:mod:`lda_bench.profiling.rounds`). Raises :class:`UsageError` for bad
    options before anything is measured.
    """
    if counter not in COUNTER_CHOICES:
        raise UsageError(f"unknown --counter {counter!r}; valid: {', '.join(COUNTER_CHOICES)}")
    if elementwise not in ELEMENTWISE_POLICIES:
        raise UsageError(f"unknown --elementwise {elementwise!r}; valid: {', '.join(ELEMENTWISE_POLICIES)}")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    if repeats is not None and repeats < 1:
        raise UsageError(f"--repeats must be positive, got {repeats}")
    if min_time is not None and min_time < 0:
        raise UsageError(f"--min-time must be >= 0, got {min_time}")
    if max_time is not None and max_time <= 0:
        raise UsageError(f"--max-time must be positive, got {max_time}")
    if rounds < 1:
        raise UsageError(f"--rounds must be positive, got {rounds}")
    prepared = prepare_suite(suite, size, channels, batch, device, dtype)
    if metrics is not None:
        chosen = split_list(metrics) or []
        for name in chosen:
            if name not in METRICS:
                raise UsageError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
        if not chosen:
            raise UsageError(f"--metrics needs at least one of: {', '.join(METRICS)}")
        prepared = replace(prepared, metrics=chosen)
    entries = upsampler_entries(upsampler, prepared, options)
    if model is not None:
        cases = build_model_cases(model, entries, size=parse_size(size) if size else None, batch=batch or 1,
                                  dtypes=prepared.dtypes, devices=prepared.devices, backends=split_list(backend))
        prepared = replace(prepared, name=f"model-{model}", description=f"whole {model} with each upsampler")
    else:
        cases = build_cases(prepared, entries, backends=split_list(backend))
    if not cases:
        raise UsageError("nothing to measure: the suite and options give no cases")
    check_cases(cases)
    settings = Settings(
        repeats=repeats or prepared.repeats or 10,
        min_time=min_time if min_time is not None else (prepared.min_time if prepared.min_time is not None else 1.0),
        max_time=max_time if max_time is not None else prepared.max_time,
        backward=backward,
        counter=counter,
        elementwise=elementwise,
        metrics=tuple(prepared.metrics),
        rounds=rounds,
    )
    path: Path | None = None
    if save:
        path = reports.ensure_writable(
            output if output is not None else reports.default_report_path("profile", prepared.name), force)
    if on_cases:
        on_cases(cases)
    devices = sorted({c.device for c in cases})
    report = environment.report_header("profile", devices[0] if len(devices) == 1 else None, command)
    report["suite"] = {"name": prepared.name, "description": prepared.description, "source": prepared.source}
    report["settings"] = {**settings.as_dict(), "threads": torch.get_num_threads()}
    if rounds > 1 and "latency" in settings.metrics:
        records, interrupted = run_cases_in_rounds(cases, settings, on_start=on_start, on_done=on_done,
                                                   on_rounds=on_rounds, on_round=on_round)
    else:
        records, interrupted = run_cases(cases, settings, on_start=on_start, on_done=on_done)
    if {"latency", "flops"} <= set(settings.metrics) and any(r["status"] == "ok" for r in records):
        # The machine's ceilings on every device measured, then each case against them.
        limits = {d: measure_limits(d, prepared.dtypes) for d in devices}
        report["machine"] = {d: lim.as_dict() for d, lim in limits.items()}
        for record in records:
            record["roofline"] = case_roofline(record, limits[record["device"]])
    report["cases"] = records
    report["interrupted"] = interrupted
    report["summary"] = {
        "planned": len(cases),
        "ok": sum(r["status"] == "ok" for r in records),
        "failed": sum(r["status"] != "ok" for r in records),
    }
    write_error = None
    if path is not None:
        try:
            reports.write_report(report, path, force=force)
        except reports.OutputWriteError as exc:
            path, write_error = None, str(exc)
    return ProfileResult(report, path, interrupted, cases, write_error)
