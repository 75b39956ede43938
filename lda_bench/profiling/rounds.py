"""Latency in interleaved rounds (``lda-bench profile --rounds N``).

Measured one after the other, each case gets its own stretch of seconds, and on a shared machine
the speed drifts between stretches by more than an upsampler adds to a whole network: two
sequential runs of ``lda-bench profile --model faster_rcnn_r50_fpn -u nearest,carafe,dysample,lda_aqu``
minutes apart put CARAFE at +33% and +4% over ``nearest`` on a 2-core VM. With rounds, every case
is first measured for everything but latency (and kept ready), then timed once per round, the
order rotating from round to round, so that drift hits every case alike:

* in a round a case runs once untimed (that call pays for the caches and freed pages of the case
  before it), then for ``min_time / rounds`` seconds and at least ``repeats / rounds`` samples;
  the round's value is their median;
* a case's latency is the median of its round values (``samples`` in the report are the round
  values, so the IQR is the spread between rounds);
* a case's overhead over its baseline, the first case of its group (same model or input step,
  shape, device and dtype: the first upsampler or backend listed), is taken round by round,
  ``case / baseline - 1`` within the same round (paired: drift between rounds cancels), and
  summarised by its median and quartiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lda_bench.core.stats import quartiles

from .cases import Case, seeded_module
from .runner import MeasureFn, Settings, backward_step, measure_prepared, run_case, throughput
from .timing import LatencyStats, measure_latency

# The forward's timing and the forward + backward's, as named in a case's record.
FORWARD = "latency_ms"
FORWARD_BACKWARD = "forward_backward_latency_ms"
OVERHEAD_FIELDS = {FORWARD: "latency_vs_baseline", FORWARD_BACKWARD: "forward_backward_vs_baseline"}


def group_key(case: Case) -> tuple[Any, ...]:
    """Cases that measure the same work with different upsamplers or backends."""
    return (case.model, case.label, tuple(case.input_shape), tuple(case.guide_shape or ()), case.scale, case.device,
            case.dtype)


def baselines(cases: list[Case]) -> list[int | None]:
    """For each case, the index of its group's first case; None for that first case itself."""
    first: dict[tuple[Any, ...], int] = {}
    out: list[int | None] = []
    for i, case in enumerate(cases):
        key = group_key(case)
        out.append(first[key] if key in first else None)
        first.setdefault(key, i)
    return out


@dataclass
class Workload:
    """One timed call of one case: its forward, or its forward + backward."""

    index: int  # the case's position in the run
    kind: str  # FORWARD or FORWARD_BACKWARD
    call: Callable[[], Any]
    round_ms: list[float] = field(default_factory=list)  # the median of each finished round


def rotated(items: list[Any], shift: int) -> list[Any]:
    """``items`` starting at position ``shift`` (modulo their number)."""
    if not items:
        return []
    shift %= len(items)
    return items[shift:] + items[:shift]


def time_round(workload: Workload, device: str, settings: Settings) -> float:
    """One round of one workload: an untimed call, then timed calls; their median in ms."""
    rounds = settings.rounds
    stats = measure_latency(workload.call, device, min_time=settings.min_time / rounds,
                            repeats=max(1, math.ceil(settings.repeats / rounds)), warmup=1, warmup_time=0.0,
                            max_time=None if settings.max_time is None else settings.max_time / rounds)
    return stats.median


def paired_overhead(case_ms: list[float], baseline_ms: list[float]) -> dict[str, Any]:
    """Quartiles over rounds of ``case / baseline - 1`` (same round)."""
    ratios = [c / b - 1.0 for c, b in zip(case_ms, baseline_ms) if b > 0]
    if not ratios:
        return {}
    q1, q2, q3 = quartiles(ratios)
    return {"median": q2, "q1": q1, "q3": q3, "rounds": len(ratios), "per_round": ratios}


def run_cases_in_rounds(
    cases: list[Case],
    settings: Settings,
    on_start: Callable[[Case], None] | None = None,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
    on_rounds: Callable[[int], None] | None = None,
    on_round: Callable[[Case, int], None] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Like :func:`lda_bench.profiling.runner.run_cases`, with latency timed in ``settings.rounds``
    interleaved rounds (module docstring).

    ``on_done`` follows each case's first phase (everything but latency); ``on_rounds(n)`` announces
    the n timed (case, round) steps that follow and ``on_round(case, r)`` reports each. Returns
    (records, interrupted). On Ctrl-C during the rounds the rounds that every case finished are
    kept; a case that fails in a round is recorded with its error and leaves the rounds.
    """
    workloads: list[Workload] = []

    def first_phase(index: int) -> MeasureFn:
        def measure(case: Case, mac_cache: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
            module = seeded_module(case)
            inputs = case.inputs()
            record = measure_prepared(case, module, inputs, settings, mac_cache, time_latency=False)

            def forward() -> Any:
                with torch.inference_mode():
                    return module(*inputs)

            workloads.append(Workload(index, FORWARD, forward))
            if settings.backward:
                workloads.append(Workload(index, FORWARD_BACKWARD, backward_step(case, module)))
            return record
        return measure

    records: list[dict[str, Any]] = []
    mac_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
    for index, case in enumerate(cases):
        if on_start:
            on_start(case)
        try:
            record = run_case(case, first_phase(index), mac_cache)
        except KeyboardInterrupt:
            return records, True
        if record["status"] != "ok":
            workloads[:] = [w for w in workloads if w.index != index]
        records.append(record)
        if on_done:
            on_done(case, record)

    interrupted = False
    kinds = [FORWARD, FORWARD_BACKWARD] if settings.backward else [FORWARD]
    if on_rounds:
        on_rounds(len({w.index for w in workloads}) * settings.rounds)
    for r in range(settings.rounds):
        for kind in kinds:
            for workload in rotated([w for w in workloads if w.kind == kind], r):
                if on_round and kind == FORWARD:
                    on_round(cases[workload.index], r)
                try:
                    workload.round_ms.append(time_round(workload, cases[workload.index].device, settings))
                except KeyboardInterrupt:
                    interrupted = True
                    break
                except Exception as exc:  # noqa: BLE001 - a failing case must not stop the others
                    record = records[workload.index]
                    record["status"] = "error"
                    record["error"] = f"{type(exc).__name__} in round {r + 1}: {exc}".strip()
                    workloads[:] = [w for w in workloads if w.index != workload.index]
            if interrupted:
                break
        if interrupted:  # keep whole rounds only, so that every case has the same ones
            for workload in workloads:
                del workload.round_ms[r:]
            break
    fill_records(records, cases, workloads)
    return records, interrupted


def fill_records(records: list[dict[str, Any]], cases: list[Case], workloads: list[Workload]) -> None:
    """Latency, throughput and the paired overheads from the workloads' round values."""
    by_key = {(w.index, w.kind): w for w in workloads if w.round_ms}
    for (index, kind), workload in by_key.items():
        stats = LatencyStats(samples=list(workload.round_ms)).as_dict()
        stats["rounds"] = len(workload.round_ms)
        records[index][kind] = stats
        if kind == FORWARD:
            records[index]["throughput"] = throughput(cases[index], stats["median"])
    for index, base in enumerate(baselines(cases)):
        for kind, name in OVERHEAD_FIELDS.items():
            case_w, base_w = by_key.get((index, kind)), by_key.get((base, kind)) if base is not None else None
            if case_w is None or base_w is None:
                continue
            overhead = paired_overhead(case_w.round_ms, base_w.round_ms)
            if overhead:
                records[index][name] = {"baseline": cases[base].id, **overhead}
