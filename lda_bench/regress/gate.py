"""Verdicts of the throughput gate: compare a measurement with a baseline, case by case.

A case is declared *slower* only when both hold (asv's rule, on drift-cancelling ratios):

* its median ratio (case time / interleaved reference time) grew by more than ``threshold``
  over the baseline's median ratio, and
* the difference is significant: two-sided Mann-Whitney U test over the per-round ratios,
  p < ``alpha``.

*faster* is the mirror image. A change beyond the threshold that is not significant, or a case
whose ratio samples spread more than ``max_noise`` (IQR / median) in either run, is *too noisy*:
the gate cannot decide. Cases absent from one side, or runs on a different suite, device type,
processor model or thread count, are *not comparable*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lda_bench.core.stats import mann_whitney_u, median, relative_iqr

FASTER, SAME, SLOWER, NOT_COMPARABLE, TOO_NOISY = "faster", "same", "slower", "not comparable", "too noisy"
EXIT_OK, EXIT_REGRESSED, EXIT_UNDECIDED, EXIT_SETUP = 0, 1, 2, 3


@dataclass(frozen=True)
class GateSettings:
    threshold: float = 1.25
    alpha: float = 0.01
    # Per-round ratios on a 2-core VM spread 10-26% (IQR/median) in a quiet run; a spread of 50%
    # would hide a change of the threshold's size.
    max_noise: float = 0.5

    def __post_init__(self) -> None:
        if self.threshold <= 1.0:
            raise ValueError(f"threshold must be > 1 (a ratio such as 1.25), got {self.threshold}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.max_noise <= 0:
            raise ValueError(f"max_noise must be positive, got {self.max_noise}")


@dataclass
class CaseVerdict:
    id: str
    label: str
    upsampler: str
    backend: str | None
    verdict: str
    reason: str = ""
    baseline_ratio: float | None = None
    current_ratio: float | None = None
    change: float | None = None
    p_value: float | None = None
    baseline_noise: float | None = None
    current_noise: float | None = None
    baseline_ms: float | None = None
    current_ms: float | None = None
    ci_low: float | None = None  # 95% interval of ``change`` (A/B mode)
    ci_high: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _device_type(device: str) -> str:
    return device.split(":")[0]


def incomparable_reasons(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Run-level reasons why the two measurements cannot be compared at all."""
    reasons = []
    b_suite, c_suite = baseline.get("suite", {}).get("name"), current.get("suite", {}).get("name")
    if b_suite != c_suite:
        reasons.append(f"different suites: baseline {b_suite!r}, now {c_suite!r}")
    b_dev = {_device_type(c["device"]) for c in baseline.get("cases", [])}
    c_dev = {_device_type(c["device"]) for c in current.get("cases", [])}
    if b_dev != c_dev:
        reasons.append(f"different devices: baseline {sorted(b_dev)}, now {sorted(c_dev)}")
    # The ratios cancel drift on one machine, not a change of machine: a hand-written kernel and
    # the MKL/cuDNN reference workload scale differently across CPU models and thread counts.
    b_env, c_env = baseline.get("env", {}), current.get("env", {})
    for key, what in (("device_name", "processors"), ("threads", "thread counts")):
        if b_env.get(key) is not None and c_env.get(key) is not None and b_env[key] != c_env[key]:
            reasons.append(f"different {what}: baseline {b_env[key]!r}, now {c_env[key]!r}")
    return reasons


def judge_case(base: dict[str, Any] | None, now: dict[str, Any] | None, settings: GateSettings) -> CaseVerdict:
    rec = now or base or {}
    verdict = CaseVerdict(id=rec.get("id", "?"), label=rec.get("label", ""), upsampler=rec.get("upsampler", ""),
                          backend=rec.get("backend"), verdict=SAME)
    if base is None or now is None:
        verdict.verdict = NOT_COMPARABLE
        verdict.reason = "case not in the baseline" if base is None else "case missing from this run"
        return verdict
    for side, record in (("baseline", base), ("this run", now)):
        if record.get("status") != "ok" or not record.get("ratio"):
            verdict.verdict = NOT_COMPARABLE
            verdict.reason = f"case failed in {side}: {record.get('error') or 'no samples'}"
            return verdict
    b_ratios, c_ratios = base["ratio"], now["ratio"]
    verdict.baseline_ratio = median(b_ratios)
    verdict.current_ratio = median(c_ratios)
    verdict.change = verdict.current_ratio / verdict.baseline_ratio
    verdict.baseline_noise = relative_iqr(b_ratios)
    verdict.current_noise = relative_iqr(c_ratios)
    verdict.baseline_ms = median(base["case_ms"])
    verdict.current_ms = median(now["case_ms"])
    verdict.p_value = mann_whitney_u(c_ratios, b_ratios)[1]
    for key in ("macs", "params"):
        if base.get(key) is not None and now.get(key) is not None and base[key] != now[key]:
            verdict.notes.append(f"{key} changed: {base[key]:,} -> {now[key]:,}")
    beyond = verdict.change > settings.threshold or verdict.change < 1 / settings.threshold
    significant = verdict.p_value < settings.alpha
    noisy = max(verdict.baseline_noise, verdict.current_noise) > settings.max_noise
    if beyond and significant:
        verdict.verdict = SLOWER if verdict.change > 1 else FASTER
        verdict.reason = f"ratio x{verdict.change:.2f}, p={verdict.p_value:.1e}"
    elif noisy:
        verdict.verdict = TOO_NOISY
        verdict.reason = (f"ratio samples spread {max(verdict.baseline_noise, verdict.current_noise):.0%} "
                          f"(IQR/median) > {settings.max_noise:.0%}")
    elif beyond:
        verdict.verdict = TOO_NOISY
        verdict.reason = f"ratio x{verdict.change:.2f} but not significant (p={verdict.p_value:.2f})"
    else:
        verdict.reason = f"ratio x{verdict.change:.2f}"
    return verdict


def judge(baseline: dict[str, Any], current: dict[str, Any], settings: GateSettings) -> tuple[list[CaseVerdict], list[str]]:
    """Verdict per case (baseline order, then new cases) and run-level incomparability reasons."""
    reasons = incomparable_reasons(baseline, current)
    base = {c["id"]: c for c in baseline.get("cases", [])}
    now = {c["id"]: c for c in current.get("cases", [])}
    verdicts = [judge_case(base.get(i), now.get(i), settings) for i in list(base) + [i for i in now if i not in base]]
    if reasons:
        for v in verdicts:
            v.verdict, v.reason = NOT_COMPARABLE, "; ".join(reasons)
    return verdicts, reasons


def exit_code(verdicts: list[CaseVerdict], reasons: list[str]) -> int:
    if reasons:
        return EXIT_UNDECIDED
    if any(v.verdict == SLOWER for v in verdicts):
        return EXIT_REGRESSED
    if any(v.verdict in (NOT_COMPARABLE, TOO_NOISY) for v in verdicts):
        return EXIT_UNDECIDED
    return EXIT_OK
