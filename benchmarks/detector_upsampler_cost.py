"""What an upsampler adds to a whole detector's forward time, measured in interleaved rounds.

``lda-bench profile --model ... --metrics latency`` measures one upsampler's model after the other,
each for its own stretch of seconds. On a shared 2-core VM the machine's speed drifts by more than
the few percent an upsampler adds over ``nearest`` (two such runs of the four Faster R-CNN models,
minutes apart, put CARAFE at +33% and +4%). Here every round times each model once, in a rotated
order, and the overhead is taken per round against the ``nearest`` call of the same round (paired
ratios: drift between rounds cancels), then summarised by its median over the rounds:

    python benchmarks/detector_upsampler_cost.py            # writes results/detector_upsampler_cost_cpu.{json,md}

The models are ``lda-bench profile``'s (the same cases, seeds and inputs), in eval mode, forward
under ``torch.no_grad``. A round's value for a model is the median of ``--calls`` back-to-back
forwards after one untimed call (the first call after the other models pays for their evicted
caches and freed pages).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lda_bench.core.environment import collect_environment, command_line, git_state  # noqa: E402
from lda_bench.core.options import split_list  # noqa: E402
from lda_bench.core.reports import write_atomic  # noqa: E402
from lda_bench.profiling.cases import UpsamplerEntry, backend_of, build_model_cases, seeded_module  # noqa: E402
from lda_bench.profiling.timing import time_calls  # noqa: E402
from upsamplers import ops  # noqa: E402

SCHEMA_VERSION = 1
BASELINE = "nearest"


def paired_overheads(rounds: Sequence[dict[str, float]], baseline: str = BASELINE) -> dict[str, list[float]]:
    """Per model, its time over the baseline's in the same round minus 1 (one value per round)."""
    names = [n for n in rounds[0] if n != baseline] if rounds else []
    return {n: [r[n] / r[baseline] - 1.0 for r in rounds] for n in names}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Lower quartile, median, upper quartile (the median alone below 4 values)."""
    if len(values) < 4:
        m = statistics.median(values)
        return m, m, m
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure(models: dict[str, Callable[[], object]], rounds: int, calls: int,
            progress: Callable[[str], None] = print) -> list[dict[str, float]]:
    """``rounds`` rounds of each model in a rotated order; per round and model the median ms of
    ``calls`` timed forwards after one untimed one."""
    names = list(models)
    results = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        row = {}
        for name in order:
            time_calls(models[name], 1)  # the cold call after the other models, untimed
            row[name] = statistics.median(time_calls(models[name], 1) for _ in range(calls)) * 1e3
        results.append({n: row[n] for n in names})
        progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {row[n]:.0f} ms" for n in names))
    return results


def build_models(model: str, upsamplers: list[str], size: tuple[int, int] | None) -> tuple[dict, dict, list]:
    cases = build_model_cases(model, [UpsamplerEntry(n) for n in upsamplers], size=size, batch=1,
                              dtypes=["fp32"], devices=["cpu"])
    calls, backends = {}, {}
    for case in cases:
        module = seeded_module(case).eval()
        inputs = case.inputs()

        def forward(module=module, inputs=inputs) -> object:
            with torch.no_grad():
                return module(*inputs)

        calls[case.upsampler] = forward
        backend = backend_of(module)  # "auto" resolves as lda-bench profile reports it
        backends[case.upsampler] = None if backend is None else ops.resolve_backend(backend, "cpu")
    return calls, backends, list(cases[0].input_shape)


def render(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Upsampler cost inside {report['model']} ({'x'.join(map(str, report['input']))}), forward, "
        f"{env.get('cpu_model') or 'cpu'}, {report['threads']} threads, float32: "
        f"{report['rounds']} interleaved rounds, each the median of {report['calls']} calls per model",
        "",
        "| upsampler | backend | ms (median of rounds) | over nearest, paired per round: median [IQR] | "
        "over nearest, ratio of medians |",
        "|---|---|---|---|---|",
    ]
    base = report["summary"][BASELINE]["median_ms"]
    for name, row in report["summary"].items():
        if name == BASELINE:
            lines.append(f"| {name} | - | {row['median_ms']:.0f} | - | - |")
            continue
        q1, q2, q3 = row["overhead_quartiles"]
        lines.append(f"| {name} | {row['backend'] or '-'} | {row['median_ms']:.0f} | {100 * q2:+.1f}% "
                     f"[{100 * q1:+.1f}%, {100 * q3:+.1f}%] | {100 * (row['median_ms'] / base - 1):+.1f}% |")
    lines += ["", "Every round (ms): " + "; ".join(
        ", ".join(f"{n} {v:.0f}" for n, v in r.items()) for r in report["rounds_ms"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="faster_rcnn_r50_fpn")
    parser.add_argument("--upsamplers", "-u", default="nearest,carafe,dysample,lda_aqu",
                        help="comma-separated; nearest (the baseline) is added when missing")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2, help="timed forwards per model and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default=None, help="HxW input size (default: the model's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "detector_upsampler_cost_cpu.json")
    parser.add_argument("--force", action="store_true", help="replace existing result files")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be >= 1")
    size = None
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            parser.error(f"--size must be HxW, got {args.size!r}")
        size = (h, w)
    for path in (args.out, args.out.with_suffix(".md")):
        if path.exists() and not args.force:
            parser.error(f"{path} exists; pass --force to replace it")
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    names = list(dict.fromkeys([BASELINE, *(split_list(args.upsamplers) or [])]))
    models, backends, input_shape = build_models(args.model, names, size)
    rounds = measure(models, args.rounds, args.calls)
    overheads = paired_overheads(rounds)
    summary = {}
    for name in names:
        row = {"backend": backends[name], "median_ms": statistics.median(r[name] for r in rounds)}
        if name != BASELINE:
            row["overhead_quartiles"] = list(quartiles(overheads[name]))
        summary[name] = row
    report = {"schema_version": SCHEMA_VERSION, "model": args.model, "input": input_shape, "threads": args.threads,
              "rounds": args.rounds, "calls": args.calls, "command": command_line(), "git": git_state(),
              "environment": collect_environment("cpu"), "rounds_ms": rounds, "summary": summary,
              "started": started}
    table = render(report)
    print(table)
    write_atomic(json.dumps(report, indent=1), args.out, force=args.force)
    write_atomic(table + "\n", args.out.with_suffix(".md"), force=args.force)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
