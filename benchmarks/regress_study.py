"""False-alarm and sensitivity studies of ``lda-bench regress`` (a script, not a test), for both
designs: ``--mode against`` (the base revision and the candidate measured in one run) and
``--mode baseline`` (today's run against a committed baseline).

False alarms: run the gate N times on unchanged code; every exit code 1 is a false alarm, exit
code 2 an undecided run. ``--competing`` keeps a 1-thread matmul loop running beside the gate
(another CPU-heavy process on the same machine, as on a shared CI runner).

Sensitivity: the same, with one upsampler slowed down by a factor (a wrapper that busy-waits
after the real forward for (factor - 1) x its measured duration, so the extra time is CPU work
like a real slowdown). The slowed upsampler must be caught every time, the others never. In
``against`` mode the slowdown is an uncommitted change in a temporary worktree of HEAD (the
candidate), and the base is HEAD itself; in ``baseline`` mode it is injected into the gate's
process.

Every gate run is a fresh process (as in CI). The report is rewritten after every run, so a study
stopped with Ctrl-C or SIGTERM keeps the runs it finished (``interrupted: true``). Examples (1.5-3
minutes per run on 2 cores):

    python benchmarks/regress_study.py --mode against --runs 20 --output results/regress-study-against-false-alarms.json
    python benchmarks/regress_study.py --mode against --runs 20 --competing \\
        --output results/regress-study-against-false-alarms-competing.json
    python benchmarks/regress_study.py --mode against --runs 5 --inject lda_aqu=1.5 \\
        --output results/regress-study-against-lda_aqu-1.5x.json
    python benchmarks/regress_study.py --mode baseline --baseline results/baseline-ci-cpu.json --runs 20 \\
        --output results/regress-study-baseline-false-alarms.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parent.parent
COMPETING_LOOP = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


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


def injected_source(name: str, factor: float) -> str:
    """Python appended to a candidate tree's upsamplers/__init__.py: ``name`` slowed down."""
    return (f"\n\n# --- benchmarks/regress_study.py: {name} slowed down {factor}x (study only) ---\n"
            f"import time\nimport torch\n\n\n{inspect.getsource(SlowedDown)}\n\n"
            f"_spec = get_spec({name!r})\n\n\n"
            f"def _slowed(channels, scale=2, **options):\n"
            f"    return SlowedDown(_spec.factory(channels, scale=scale, **options), {factor!r})\n\n\n"
            f"register({name!r}, needs_guide=_spec.needs_guide, reference=_spec.reference, backends=_spec.backends, "
            f"overwrite=True)(_slowed)\n")


@contextmanager
def candidate_tree(inject_spec: str | None) -> Iterator[Path]:
    """A temporary worktree of HEAD (the commit under study), with the slowdown as an uncommitted
    change when ``inject_spec`` is given; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="regress-study-"))
    tree = folder / "candidate"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), "HEAD"], check=True,
                   capture_output=True)
    try:
        if inject_spec:
            name, _, factor = inject_spec.partition("=")
            init = tree / "upsamplers" / "__init__.py"
            init.write_text(init.read_text() + injected_source(name, float(factor)))
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def competing_process(enabled: bool) -> Iterator[None]:
    """A 1-thread matmul loop beside the gate while the block runs."""
    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", COMPETING_LOOP])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def against_run(args: argparse.Namespace, tree: Path) -> dict[str, Any]:
    """One ``lda-bench regress --against`` run with the candidate ``tree``; its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gate.json"
        load = os.getloadavg()[0]
        start = time.perf_counter()
        # The console script, not "python -m lda_bench": with -m the candidate tree (the current folder)
        # would come first on sys.path and its own lda_bench would measure; the study measures with
        # the lda-bench installed here.
        script = Path(sys.executable).with_name("lda-bench")
        proc = subprocess.run([str(script), "regress", "--against", args.against, "--threshold", str(args.threshold),
                               "--output", str(out)], cwd=tree, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if not out.exists():
            raise SystemExit(f"gate run failed (exit {proc.returncode}):\n{proc.stderr}")
        report = json.loads(out.read_text())
    gate = report["gate"]
    return {
        "exit_code": proc.returncode, "seconds": seconds, "load_before": load, "load_after": os.getloadavg()[0],
        "verdicts": [{k: v[k] for k in ("id", "upsampler", "backend", "verdict", "change", "ci_low", "ci_high",
                                         "p_value", "current_noise")} for v in gate["verdicts"]],
        "rounds": {c["id"]: len(c.get("ratio") or []) for c in report["cases"]},
        "reasons": gate["reasons"],
    }


def baseline_run(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--baseline", str(args.baseline), "--threshold",
           str(args.threshold)] + (["--inject", args.inject] if args.inject else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    target = args.inject.partition("=")[0] if args.inject else None
    summary: dict[str, Any] = {
        "mode": args.mode,
        "runs": len(runs),
        "inject": args.inject,
        "competing_process": COMPETING_LOOP if args.competing else None,
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
    changes = [v["change"] for r in runs for v in r["verdicts"] if v["change"] is not None and v["upsampler"] != target]
    summary["other_cases_change_range"] = [min(changes), max(changes)] if changes else None
    if target is None:
        summary["false_alarm_runs"] = sum(r["exit_code"] == 1 for r in runs)
        summary["undecided_runs"] = sum(r["exit_code"] == 2 for r in runs)
    else:
        caught = sum(any(v["upsampler"] == target and v["verdict"] == "slower" for v in r["verdicts"]) for r in runs)
        others = sum(any(v["upsampler"] != target and v["verdict"] == "slower" for v in r["verdicts"]) for r in runs)
        target_changes = [v["change"] for r in runs for v in r["verdicts"] if v["upsampler"] == target and v["change"]]
        summary["target_caught_runs"] = caught
        summary["runs_with_other_cases_flagged"] = others
        summary["target_change_range"] = [min(target_changes), max(target_changes)] if target_changes else None
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("against", "baseline"), default="against")
    parser.add_argument("--against", default="HEAD", help="--mode against: the base revision (default HEAD)")
    parser.add_argument("--baseline", type=Path, help="--mode baseline: the committed baseline")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--inject", help="NAME=FACTOR: slow this upsampler down by FACTOR (e.g. lda_aqu=1.5)")
    parser.add_argument("--competing", action="store_true", help="run a 1-thread matmul loop beside the gate")
    parser.add_argument("--threshold", type=float, default=1.25)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--force", action="store_true", help="replace an existing --output file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.mode == "baseline" and args.baseline is None:
        parser.error("--mode baseline needs --baseline FILE")
    if args.output and args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to replace it")
    from lda_bench.core import signals

    signals.install()
    runs: list[dict[str, Any]] = []
    interrupted = False
    try:
        with competing_process(args.competing):
            with candidate_tree(args.inject if args.mode == "against" else None) as tree:
                for i in range(args.runs):
                    run = against_run(args, tree) if args.mode == "against" else baseline_run(args)
                    runs.append(run)
                    verdicts = Counter(v["verdict"] for v in run["verdicts"])
                    print(f"run {i + 1}/{args.runs}: exit {run['exit_code']} in {run['seconds']:.0f} s, "
                          f"load {run['load_before']:.2f}, {dict(verdicts)}", flush=True)
                    # After every run, so that an interrupted study keeps the runs it finished.
                    write_study(args, runs, interrupted=i + 1 < args.runs)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through lda_bench.core.signals
        interrupted = True
    code = signals.interrupted_exit_code() if interrupted else 0
    if not runs:
        return code
    print(json.dumps(summarise(runs, args), indent=2))
    write_study(args, runs, interrupted)
    return code


def write_study(args: argparse.Namespace, runs: list[dict[str, Any]], interrupted: bool) -> None:
    """The study report so far (``interrupted``: fewer runs than asked for)."""
    if not args.output or not runs:
        return
    from lda_bench.core import environment, reports

    report = environment.report_header("regress-study")
    report.update(summary=summarise(runs, args), runs=runs, runs_asked=args.runs, interrupted=interrupted,
                  baseline=None if args.baseline is None else str(args.baseline),
                  against=args.against if args.mode == "against" else None)
    reports.write_report(report, args.output, force=True)


if __name__ == "__main__":
    sys.exit(main())
