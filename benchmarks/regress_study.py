"""False-alarm and sensitivity studies of ``lda-bench regress`` (a script, not a test).

False alarms: run the gate N times on unchanged code against a baseline; every exit code 1 is a
false alarm, exit code 2 an undecided run.

Sensitivity: the same, with one upsampler slowed down by a factor (a test-only wrapper that
busy-waits after the real forward for (factor - 1) x its measured duration, so the extra time is
CPU work like a real slowdown). The slowed upsampler must be caught every time, the others never.

Each gate run is a fresh process (as in CI). Example (about 1-2 minutes per run on 2 cores):

    python benchmarks/regress_study.py --baseline results/baseline-ci-cpu.json --runs 20 \
        --output results/regress-study-false-alarms.json
    python benchmarks/regress_study.py --baseline results/baseline-ci-cpu.json --runs 5 \
        --inject carafe=1.5 --output results/regress-study-carafe-1.5x.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


class SlowedDown(torch.nn.Module):
    """Runs ``inner`` and then spins for (factor - 1) x the time the forward took."""

    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.factor = factor
        if hasattr(inner, "backend"):
            self.backend = inner.backend

    def forward(self, *args: Any) -> Any:
        start = time.perf_counter()
        out = self.inner(*args)
        end = start + (time.perf_counter() - start) * self.factor
        while time.perf_counter() < end:
            pass
        return out


def inject(name: str, factor: float) -> None:
    """Replace the registered factory of ``name`` by a slowed-down wrapper (this process only)."""
    import upsamplers

    spec = upsamplers.get_spec(name)

    def slowed(channels: int, scale: int = 2, **options: Any) -> torch.nn.Module:
        return SlowedDown(spec.factory(channels, scale=scale, **options), factor)

    upsamplers.register(name, needs_guide=spec.needs_guide, reference=spec.reference, backends=spec.backends,
                        overwrite=True)(slowed)


def child(args: argparse.Namespace) -> int:
    """One gate run in this process; prints its gate section as JSON on the last line."""
    if args.inject:
        name, _, factor = args.inject.partition("=")
        inject(name, float(factor))
    from lda_bench.regress.gate import GateSettings
    from lda_bench.regress.session import regress

    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = regress(args.baseline, gate=GateSettings(threshold=args.threshold))
    payload = {
        "exit_code": result.exit_code,
        "seconds": time.perf_counter() - start,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "calibration_ms": result.report["calibration"]["before"]["median_ms"],
        "verdicts": [{k: v.as_dict()[k] for k in ("id", "upsampler", "backend", "verdict", "change", "p_value",
                                                   "current_noise")} for v in result.verdicts],
        "reasons": result.reasons,
    }
    print(json.dumps(payload))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--inject", help="NAME=FACTOR: slow this upsampler down by FACTOR (e.g. carafe=1.5)")
    parser.add_argument("--threshold", type=float, default=1.25)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    runs = []
    for i in range(args.runs):
        cmd = [sys.executable, __file__, "--child", "--baseline", str(args.baseline), "--threshold",
               str(args.threshold)] + (["--inject", args.inject] if args.inject else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 3
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(run)
        verdicts = Counter(v["verdict"] for v in run["verdicts"])
        print(f"run {i + 1}/{args.runs}: exit {run['exit_code']} in {run['seconds']:.0f} s, "
              f"load {run['load_before']:.2f}, {dict(verdicts)}", flush=True)
    target = args.inject.partition("=")[0] if args.inject else None
    summary: dict[str, Any] = {
        "runs": len(runs),
        "inject": args.inject,
        "threshold": args.threshold,
        "exit_codes": dict(Counter(r["exit_code"] for r in runs)),
        "mean_seconds": sum(r["seconds"] for r in runs) / len(runs),
        "max_load": max(max(r["load_before"], r["load_after"]) for r in runs),
    }
    per_case: dict[str, Counter[str]] = {}
    for r in runs:
        for v in r["verdicts"]:
            per_case.setdefault(v["id"], Counter())[v["verdict"]] += 1
    summary["verdicts_per_case"] = {k: dict(v) for k, v in per_case.items()}
    if target is None:
        summary["false_alarm_runs"] = sum(r["exit_code"] == 1 for r in runs)
        summary["undecided_runs"] = sum(r["exit_code"] == 2 for r in runs)
    else:
        caught = sum(any(v["upsampler"] == target and v["verdict"] == "slower" for v in r["verdicts"]) for r in runs)
        others = sum(any(v["upsampler"] != target and v["verdict"] == "slower" for v in r["verdicts"]) for r in runs)
        summary["target_caught_runs"] = caught
        summary["runs_with_other_cases_flagged"] = others
    print(json.dumps(summary, indent=2))
    if args.output:
        from lda_bench import environment, reports

        report = environment.report_header("regress-study")
        report.update(summary=summary, runs=runs, baseline=str(args.baseline))
        reports.write_report(report, args.output, force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
