"""``lda-bench regress --against REV``: the base revision and the candidate measured in one run.

asv's ``continuous`` design: nothing recorded on another day is compared. The base revision is
checked out into a temporary worktree (:mod:`.worktree`); each side runs in its own Python
process (:mod:`.worker`) that imports its own tree's ``upsamplers`` and loads its own C++
extension from the shared extension cache, whose folders are keyed by a hash of the sources and
flags (so a base whose C++ sources equal the candidate's reuses the candidate's build, and one
that differs is built once into a folder of its own), while the measuring code
is this lda-bench on both sides. Per case both processes build the module with the same seed and
warm it up; then rounds alternate the sides A B, B A, A B, ... and each round's ratio
candidate / base (per call) cancels drift that is slow compared with a round. Blocks of both
sides last about as long (:func:`lda_bench.regress.paired.matched_calls`).

The verdict per case (:func:`decide`) needs size *and* evidence: a case is slower when the 95%
bootstrap interval of its median ratio lies wholly above ``threshold`` and a two-sided Wilcoxon
signed-rank test of the paired log-ratios gives p < ``alpha`` (faster is the mirror image); it is
the same when the interval lies wholly inside (1/threshold, threshold). Anything else is "too
noisy": the data cannot tell. A case keeps being measured, round after round, while it is too
noisy and ``max_time`` allows, so a shared machine's noise costs time before it costs a decision.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import torch

from lda_bench.core import environment
from lda_bench.core.options import split_list
from lda_bench.core.stats import bootstrap_median_ci, median, relative_iqr, wilcoxon_signed_rank
from lda_bench.profiling.cases import Case, build_cases, check_cases
from lda_bench.profiling.runner import Settings, run_cases
from lda_bench.profiling.session import prepare_suite, upsampler_entries

from .gate import FASTER, NOT_COMPARABLE, SAME, SLOWER, TOO_NOISY, CaseVerdict, GateSettings
from .paired import Timing, matched_calls
from .worker import Worker, WorkerError
from .worktree import Candidate, base_tree, candidate, repository_root, resolve_revision

SIDES = ("base", "candidate")


class Sides:
    """The two worker processes, restarted when one dies."""

    def __init__(self, trees: dict[str, Path], scratch: Path, threads: int) -> None:
        self.trees, self.scratch, self.threads = trees, scratch, threads
        self.workers: dict[str, Worker] = {}
        self.hello: dict[str, dict[str, Any]] = {}

    def start(self, side: str) -> Worker:
        shim = self.scratch / f"path-{side}"
        shim.mkdir(exist_ok=True)
        link = shim / "upsamplers"
        if not link.exists():
            link.symlink_to(self.trees[side] / "upsamplers", target_is_directory=True)
        worker = Worker(side, shim, cwd=self.scratch)
        try:
            hello = worker.request("hello", 300.0, threads=self.threads)
        except WorkerError:
            worker.close()
            raise
        expected = (self.trees[side] / "upsamplers").resolve()
        if Path(hello["upsamplers"]) != expected:
            worker.close()
            raise WorkerError(f"the {side} process imported upsamplers from {hello['upsamplers']}, not {expected}")
        self.workers[side], self.hello[side] = worker, hello
        return worker

    def get(self, side: str) -> Worker:
        worker = self.workers.get(side)
        if worker is None or worker.process.poll() is not None:
            worker = self.start(side)
        return worker

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()


def measure_pair(case: Case, sides: Sides, timing: Timing, settings: GateSettings) -> dict[str, Any]:
    """Prepare ``case`` on both sides, then time interleaved rounds until the gate can decide (or
    ``timing.max_time``); the record of the case."""
    workers = {side: sides.get(side) for side in SIDES}
    record: dict[str, Any] = {}
    try:
        prepared = {side: workers[side].prepare(case, timing.warmup) for side in SIDES}
        calls = dict(zip(SIDES, matched_calls(prepared["base"]["call_s"], prepared["candidate"]["call_s"],
                                              timing.min_block_s)))
        ms: dict[str, list[float]] = {side: [] for side in SIDES}
        start = time.perf_counter()
        spent = 0.0
        round_index = 0
        while True:
            order = SIDES if round_index % 2 == 0 else SIDES[::-1]  # A B, B A, A B, ...
            for side in order:
                seconds = workers[side].request("time", timing.max_time + 300.0, calls=calls[side])["seconds"]
                ms[side].append(seconds / calls[side] * 1e3)
                spent += seconds
            round_index += 1
            if len(ms["base"]) < timing.rounds or spent < timing.min_time:
                continue
            if time.perf_counter() - start > timing.max_time:
                break
            ratios = [c / b for c, b in zip(ms["candidate"], ms["base"])]
            if decide(ratios, settings)[0] != TOO_NOISY:
                break
    finally:
        for worker in workers.values():
            if worker.process.poll() is None:
                try:
                    worker.request("release", 60.0)
                except WorkerError:
                    pass
    for side in SIDES:
        record[side] = {k: prepared[side].get(k) for k in ("backend", "params", "macs", "note")}
        record[side].update(ms=ms[side], calls_per_sample=calls[side])
    record["backend"] = record["candidate"]["backend"]
    record["params"] = record["candidate"]["params"]
    record["macs"] = record["candidate"]["macs"]
    record["ratio"] = [c / b for c, b in zip(ms["candidate"], ms["base"])]
    return record


def decide(ratios: list[float], settings: GateSettings) -> tuple[str, str]:
    """(verdict, reason) for per-round ratios candidate / base (see the module docstring)."""
    change = median(ratios)
    low, high = bootstrap_median_ci(ratios)
    p = wilcoxon_signed_rank([math.log(r) for r in ratios])[1]
    threshold = settings.threshold
    interval = f"x{change:.2f} (95% CI {low:.2f}-{high:.2f})"
    if low > threshold and p < settings.alpha:
        return SLOWER, f"{interval}, p={p:.1e}"
    if high < 1 / threshold and p < settings.alpha:
        return FASTER, f"{interval}, p={p:.1e}"
    if 1 / threshold < low and high < threshold:
        return SAME, interval
    spread = relative_iqr(ratios)
    if spread > settings.max_noise:
        return TOO_NOISY, f"ratios spread {spread:.0%} (IQR/median) > {settings.max_noise:.0%}; {interval}"
    return TOO_NOISY, f"{interval} reaches the threshold x{threshold:.2f} (p={p:.1e})"


def judge_pair(record: dict[str, Any], settings: GateSettings) -> CaseVerdict:
    """The verdict on one A/B case record (see the module docstring)."""
    verdict = CaseVerdict(id=record.get("id", "?"), label=record.get("label", ""), upsampler=record.get("upsampler", ""),
                          backend=record.get("backend"), verdict=SAME)
    if record.get("status") != "ok" or not record.get("ratio"):
        verdict.verdict = NOT_COMPARABLE
        verdict.reason = f"case failed: {record.get('error') or 'no samples'}"
        return verdict
    ratios = record["ratio"]
    verdict.change = median(ratios)
    verdict.ci_low, verdict.ci_high = bootstrap_median_ci(ratios)
    verdict.current_noise = relative_iqr(ratios)
    verdict.baseline_ms = median(record["base"]["ms"])
    verdict.current_ms = median(record["candidate"]["ms"])
    verdict.p_value = wilcoxon_signed_rank([math.log(r) for r in ratios])[1]
    verdict.verdict, verdict.reason = decide(ratios, settings)
    for key in ("params", "macs"):
        b, c = record["base"].get(key), record["candidate"].get(key)
        if b is not None and c is not None and b != c:
            verdict.notes.append(f"{key} changed: {b:,} -> {c:,}")
    for side in SIDES:
        if record[side].get("note"):
            verdict.notes.append(f"{side}: {record[side]['note']}")
    return verdict


def measure_against(
    revision: str,
    suite: str | Path,
    *,
    upsampler: str | None = None,
    backend: str | None = None,
    threads: int | None = None,
    timing: Timing | None = None,
    gate: GateSettings | None = None,
    command: str | None = None,
    repository: Path | None = None,
    on_cases: Callable[[list[Case]], None] | None = None,
    on_start: Callable[[Case], None] | None = None,
    on_done: Callable[[Case, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every case of ``suite`` under ``revision`` (base) and the working tree (candidate);
    the ``regress`` report (``mode: against``) with both sides' samples per case."""
    timing = timing or Timing()
    gate = gate or GateSettings()
    root = repository_root(repository)
    commit = resolve_revision(root, revision)
    cand = candidate(root)
    if not (root / "upsamplers").is_dir():
        raise WorkerError(f"{root} has no upsamplers/ package to measure")
    threads = threads or torch.get_num_threads()
    prepared = prepare_suite(suite, None, None, None, None, None)
    cases = build_cases(prepared, upsampler_entries(upsampler, prepared, None), backends=split_list(backend))
    check_cases(cases)
    report = environment.report_header("regress", None, command)
    report["mode"] = "against"
    report["suite"] = {"name": prepared.name, "description": prepared.description, "source": prepared.source}
    report["settings"] = {**dataclasses.asdict(timing), "threads": threads}
    report["against"] = {"revision": revision, "commit": commit, "candidate": candidate_section(cand)}
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="lda-bench-regress-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        base = stack.enter_context(base_tree(root, commit, scratch))
        if not (base / "upsamplers").is_dir():
            raise WorkerError(f"revision {revision} ({commit[:12]}) has no upsamplers/ package to measure")
        sides = Sides({"base": base, "candidate": root}, scratch, threads)
        stack.callback(sides.close)
        for side in SIDES:
            sides.start(side)
        report["against"]["processes"] = sides.hello
        if on_cases:
            on_cases(cases)
        records, interrupted = run_cases(cases, Settings(), on_start=on_start, on_done=on_done,
                                         measure=lambda case, _cache: measure_pair(case, sides, timing, gate))
    report["cases"] = records
    report["interrupted"] = interrupted
    return report


def candidate_section(cand: Candidate) -> dict[str, Any]:
    return {"tree": str(cand.root), "commit": cand.commit, "dirty": cand.dirty}


