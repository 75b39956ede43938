"""Benchmark LDA-AQU's sampling attention, or the whole module, against the official code's structure.

    python benchmarks/lda_aqu_backends.py                      # the op on CPU, 2 threads, all four levels
    python benchmarks/lda_aqu_backends.py --module             # the whole module, and CARAFE and DySample
    python benchmarks/lda_aqu_backends.py --device cuda        # reference, triton, official on a GPU
    python benchmarks/lda_aqu_backends.py --levels P5,P4 --budget-s 10 --out /tmp/quick.json

For the four FPN levels of an 800 x 1333 image padded to 832 x 1344 (C = 256, r = 4, so 64 query
and key channels, 2 groups, 9 points, one head, with embedding; batch 1, float32), it times the
forward (under no_grad) and forward + backward of:

* ``official``: the official code's structure (benchmarks/official_structure.py);
* ``reference``, ``cpp`` (CPU) and ``triton`` (CUDA): the backends of ``lda_aqu::sample_attention``.

With ``--module``, what a user calls instead: ``upsamplers.build("lda_aqu", 256, backend=...)`` on
the low-resolution map x (1 x 256 x H x W), forward and forward + backward (gradients to x and to
every parameter), as

* ``official``: the official ``LDA_AQU.forward`` structure on the same parameters
  (``lda_aqu_module_official``);
* ``reference``: the layers one by one with the reference attention; ``cpp`` / ``triton``: the
  fused module operator ``lda_aqu::module_forward``;
* ``carafe`` and ``dysample``: those upsamplers' modules at the same shape, default options.

The LDA-AQU modules share one set of parameters: the official initialisation, then the last offset
convolution drawn from N(0, 0.02^2) (the official init zeroes it, which leaves every point on the
undeformed grid; these weights spread the points over about two output pixels, like a trained
model's). Module GFLOP/s count the module's MACs under lda-bench's policy
(``lda-bench profile``'s FLOP column: upsamplers.ops.lda_aqu_module.flops.module_macs for LDA-AQU,
lda-bench's dispatch counter for CARAFE and DySample).

Implementations are interleaved round by round (their order rotates) so that load drifts on a
shared machine hit all of them alike; the report gives medians and the ratios of medians.

In each round an implementation first runs once untimed (reported as "cold"), then back to back
until its timed calls add up to --repeat-s seconds (at least one call, at most 50); the round's
value is the median of those calls. The same rule for every implementation: the official
structure gets one timed call per round (it takes over a second), the C++ backend a dozen or more.
Why: on a virtual machine whose host takes freed guest memory back (free page reporting, about
2 s after a free, as on this project's CI machines), calls that allocate right after another
implementation freed gigabytes re-fault those pages on the host. Measured at P2 after the official
structure's forward + backward: C++ forward calls of 845, 57, 30, 44, 28, 23, 25 ms in a row, or
94, 42, 28, 24, 23 ms: the first few calls pay for the host, the kernel itself takes about 23.
Timing only the second call (the previous design) left rounds at 50-70 ms. On CPU the script also
pauses 2.5 s (--settle-s) before each implementation's calls, so that most of that reclaim
happens before them, and then waits (at most 3 s) until no other process or kernel thread has
used the CPU for two 20 ms windows.

Inputs are synthetic: standard normal q, k, v; offsets = the 3 x 3 base grid + 11 * tanh(0.25 z),
z standard normal and independent per pixel (a spread of about 2.7 output pixels, more scattered
than the smooth offsets of a trained model, so cache locality is if anything pessimistic).

Memory: each (level, implementation, mode) runs once in a fresh subprocess. On CPU the peak is
the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just
before the call) minus the resident size just before it; "extra" subtracts the output (and, for
forward + backward, the input gradients), leaving the working memory of the implementation. On
CUDA the allocator's peak minus the memory allocated before the call.

GFLOP/s use the FLOP convention of upsamplers.ops.sample_attention.flops (2 x 5 x B*Ho*Wo*P*(Ch+C) forward,
twice that for the backward), against the measured float32 matmul rate of the same device and
thread count.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from official_structure import lda_aqu_module_official, sample_attention_official  # noqa: E402

import upsamplers  # noqa: E402
import upsamplers.ops as ops  # noqa: E402
from lda_bench.core.environment import collect_environment, command_line, git_state  # noqa: E402
from lda_bench.core.options import split_list  # noqa: E402
from lda_bench.core.reports import write_atomic  # noqa: E402
from lda_bench.profiling.timing import synchronize, time_calls  # noqa: E402
from upsamplers.ops.lda_aqu_module.flops import module_macs  # noqa: E402
from upsamplers.ops.sample_attention.flops import sample_attention_macs  # noqa: E402

# Output level -> low-res input size (832 x 1344 / stride of the level above).
LEVELS = {"P5": (13, 21), "P4": (26, 42), "P3": (52, 84), "P2": (104, 168)}
C, CH, GROUPS, HEADS, POINTS, RANGE = 256, 64, 2, 1, 9, 11.0
SCHEMA_VERSION = 4  # 4: "workload" (op or module), MACs per implementation
MODULE_PEERS = ("carafe", "dysample")
MAX_REPEATS = 50


def level_size(level: str) -> tuple[int, int]:
    return LEVELS[level] if level in LEVELS else (3, 4)  # anything else: a tiny warm-up problem


def make_inputs(level: str, device: str, seed: int = 0, module: bool = False) -> tuple:
    """The op's inputs (q, k, v, offsets, embedding), or with ``module`` the module's input x."""
    h, w = level_size(level)
    ho, wo = 2 * h, 2 * w
    gen = torch.Generator().manual_seed(seed)
    if module:
        return (torch.randn(1, C, h, w, generator=gen).to(device),)
    q = torch.randn(1, CH, ho, wo, generator=gen)
    k = torch.randn(1, CH, h, w, generator=gen)
    v = torch.randn(1, C, h, w, generator=gen)
    r = torch.arange(3, dtype=torch.float32) - 1
    base = torch.stack((r.repeat_interleave(3), r.repeat(3)), dim=-1).reshape(1, 1, POINTS * 2, 1, 1)
    z = torch.randn(1, GROUPS, POINTS * 2, ho, wo, generator=gen)
    off = (base + RANGE * torch.tanh(0.25 * z)).reshape(1, GROUPS * POINTS * 2, ho, wo)
    emb = 0.02 * torch.randn(HEADS, POINTS, CH // HEADS, generator=gen)
    return tuple(t.to(device) for t in (q, k, v, off, emb))


def implementations(device: str, module: bool = False) -> dict[str, Callable]:
    """Name -> a callable of the inputs of :func:`make_inputs`; module callables are nn.Modules."""
    if module:
        return module_implementations(device)
    impls: dict[str, Callable] = {"official": lambda *a: sample_attention_official(*a, GROUPS, HEADS)}
    for name in ops.available_backends(device):
        if name == "triton" and device != "cuda":
            continue  # the interpreter is a test vehicle, not an execution path
        impls[name] = lambda *a, _name=name: ops.sample_attention(*a, GROUPS, HEADS, backend=_name)
    return impls


class OfficialModule(torch.nn.Module):
    """The official structure on the parameters of an upsamplers LDA_AQU module."""

    def __init__(self, lda_aqu: torch.nn.Module) -> None:
        super().__init__()
        self.lda_aqu = lda_aqu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lda_aqu_module_official(self.lda_aqu, x)


def module_implementations(device: str) -> dict[str, Callable]:
    torch.manual_seed(0)
    reference = upsamplers.build("lda_aqu", C, backend="reference").to(device)
    with torch.no_grad():
        reference.conv_offset[-1].weight.normal_(0.0, 0.02)
    impls: dict[str, Callable] = {"official": OfficialModule(reference), "reference": reference}
    for name in ops.available_backends(device):
        if name == "reference" or (name == "triton" and device != "cuda"):
            continue
        fused = upsamplers.build("lda_aqu", C, backend=name).to(device)
        fused.load_state_dict(reference.state_dict())
        impls[name] = fused
    for peer in MODULE_PEERS:
        torch.manual_seed(0)
        impls[peer] = upsamplers.build(peer, C).to(device)
    return impls


def implementation_macs(level: str, impls: dict[str, Callable], module: bool, device: str) -> dict[str, int]:
    """Forward MACs of each implementation at this level (the op's formula; the modules' policy count)."""
    h, w = level_size(level)
    if not module:
        macs = sample_attention_macs((1, CH, 2 * h, 2 * w), (1, C, h, w), (1, GROUPS * POINTS * 2, 2 * h, 2 * w),
                                     GROUPS)
        return {n: macs for n in impls}
    from lda_bench.profiling.flops import count_macs

    lda = module_macs((1, C, h, w), (CH, C, 1, 1), (2 * POINTS, CH // GROUPS, 3, 3), GROUPS, 2)
    out = {}
    for n, fn in impls.items():
        if n in MODULE_PEERS:
            out[n] = count_macs(fn, make_inputs(level, "cpu", module=True), "dispatch", "count").macs
        else:
            out[n] = lda
    return out


def run_forward(fn: Callable, inputs: tuple, device: str) -> float:
    """Seconds of one forward under no_grad; the output is freed after the clock stops."""
    kept = []

    def call() -> None:
        with torch.no_grad():
            kept.append(fn(*inputs))

    synchronize(device)
    return time_calls(call, 1, device)


def run_forward_backward(fn: Callable, inputs: tuple, grad: torch.Tensor, device: str) -> float:
    """Seconds of one forward + backward from fresh leaf tensors (freed after the clock stops); a
    module's parameter gradients are reset (to None) before the clock starts."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    kept = []
    if isinstance(fn, torch.nn.Module):
        fn.zero_grad(set_to_none=True)

    def call() -> None:
        out = fn(*leaves)
        out.backward(grad)
        kept.append(out)

    synchronize(device)
    return time_calls(call, 1, device)


# A round whose other processes kept more than this many cores busy on average is "loaded".
# On a shared 2-core machine one busy neighbour halves a 2-thread kernel (the thread team waits for
# its preempted member), so loaded rounds are reported but left out of the headline medians.
CLEAN_LOAD = 0.15


def cpu_snapshot() -> tuple[float, float, float]:
    """(CPU seconds used by all processes, by this one, wall clock)."""
    busy = 0.0
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        pass
    own = os.times()
    return busy, own.user + own.system, time.perf_counter()


def foreign_load(before: tuple, after: tuple) -> float:
    """Average number of cores that other processes kept busy between two snapshots."""
    if not after[0]:
        return 0.0
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / max(1e-9, after[2] - before[2])


def settle(pause_s: float, window_s: float = 0.02, quiet_cores: float = 0.05, timeout_s: float = 3.0) -> None:
    """Pause, then wait until other processes and kernel threads leave the CPU alone for two windows.

    The host's reclaim of memory another implementation just freed happens meanwhile (module
    docstring), not during the measured calls.
    """
    if pause_s <= 0:
        return
    time.sleep(pause_s)
    deadline = time.perf_counter() + timeout_s
    quiet = 0
    while quiet < 2 and time.perf_counter() < deadline:
        before = cpu_snapshot()
        time.sleep(window_s)
        quiet = quiet + 1 if foreign_load(before, cpu_snapshot()) < quiet_cores else 0


def matmul_gflops(device: str, n: int = 2048, repeats: int = 7) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        times.append(time_calls(lambda: torch.mm(a, b), 1, device))
    return 2 * n**3 / statistics.median(times[1:]) / 1e9


# ---------------------------------------------------------------------------------------------
# Memory, one fresh process per measurement.

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_memory_here(level: str, impl: str, mode: str, device: str, module: bool = False) -> dict:
    fn = implementations(device, module)[impl]
    inputs = make_inputs(level, device, module=module)
    # Load the library and start the thread pool on a tiny problem first.
    run_forward(fn, make_inputs("tiny", device, module=module), device)
    h, w = LEVELS[level]
    out_bytes = C * 4 * h * w * 4
    grad_bytes = sum(t.numel() * t.element_size() for t in inputs)
    if isinstance(fn, torch.nn.Module):
        grad_bytes += sum(p.numel() * p.element_size() for p in fn.parameters())
    grad = torch.randn(1, C, 2 * h, 2 * w, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _rss_bytes()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current resident size
    if mode == "fwd":
        run_forward(fn, inputs, device)
    else:
        run_forward_backward(fn, inputs, grad, device)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _hwm_bytes()) - before
    kept = out_bytes + (grad_bytes if mode == "fwd+bwd" else 0)
    return {"peak_bytes": peak, "extra_bytes": peak - kept, "output_bytes": out_bytes}


def measure_memory(level: str, impl: str, mode: str, device: str, threads: int, module: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--device", device, "--threads", str(threads), "--memory-probe",
           f"{level}:{impl}:{mode}", *(["--module"] if module else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------

def environment(device: str, threads: int) -> dict:
    """What the results depend on, as every lda-bench report records it (plus the CPU's vector ISA)."""
    env = collect_environment(device)
    git = git_state()
    return {
        "python": env["python"], "torch": env["torch"], "device": device,
        "cpu": env["cpu_model"], "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
        "gpu": env["device_name"] if device == "cuda" else None,
        "git_commit": git["commit"], "git_dirty": git["dirty"], "command": command_line(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }


def timed_calls(call: Callable[[], float], repeat_s: float) -> list[float]:
    """Seconds of back-to-back calls until they add up to ``repeat_s`` (at least one, at most MAX_REPEATS)."""
    times = [call()]
    while sum(times) < repeat_s and len(times) < MAX_REPEATS:
        times.append(call())
    return times


def bench_level(level: str, impls: dict[str, Callable], device: str, budget_s: float, min_rounds: int,
                max_rounds: int, settle_s: float = 0.0, repeat_s: float = 0.5, module: bool = False) -> dict:
    inputs = make_inputs(level, device, module=module)
    h, w = LEVELS[level]
    grad = torch.randn(1, C, 2 * h, 2 * w, device=device, generator=None)
    names = list(impls)
    # Warm-up, and check every LDA-AQU implementation against the reference on this level's inputs.
    with torch.no_grad():
        expected = impls["reference"](*inputs)
        outputs = {n: impls[n](*inputs) for n in names if n not in MODULE_PEERS}
        max_diff = {n: float((outputs[n] - expected).abs().max()) if n in outputs else None for n in names}
        # And against float64 (the reference in double precision): how far float32 round-off alone goes.
        if module:
            exact = copy.deepcopy(impls["reference"]).double()(*(t.double() for t in inputs))
        else:
            exact = ops.sample_attention(*(t.double() for t in inputs), GROUPS, HEADS, backend="reference")
        diff_fp64 = {n: float((outputs[n].double() - exact).abs().max()) if n in outputs else None for n in names}
        del outputs, exact
    for n in names:
        run_forward_backward(impls[n], inputs, grad, device)
    fwd: dict[str, list[float]] = {n: [] for n in names}  # per round: the median of its timed calls
    both: dict[str, list[float]] = {n: [] for n in names}
    fwd_calls: dict[str, list[list[float]]] = {n: [] for n in names}  # per round: every timed call
    both_calls: dict[str, list[list[float]]] = {n: [] for n in names}
    fwd_cold: dict[str, list[float]] = {n: [] for n in names}
    both_cold: dict[str, list[float]] = {n: [] for n in names}
    foreign: list[float] = []
    started = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - started < budget_s):
        order = names[rounds % len(names):] + names[:rounds % len(names)]
        before = cpu_snapshot()
        for n in order:
            settle(settle_s)
            fwd_cold[n].append(run_forward(impls[n], inputs, device))
            fwd_calls[n].append(timed_calls(lambda n=n: run_forward(impls[n], inputs, device), repeat_s))
            fwd[n].append(statistics.median(fwd_calls[n][-1]))
        for n in order:
            settle(settle_s)
            both_cold[n].append(run_forward_backward(impls[n], inputs, grad, device))
            both_calls[n].append(timed_calls(lambda n=n: run_forward_backward(impls[n], inputs, grad, device),
                                              repeat_s))
            both[n].append(statistics.median(both_calls[n][-1]))
        foreign.append(foreign_load(before, cpu_snapshot()))
        rounds += 1
    macs = implementation_macs(level, impls, module, device)
    clean = [i for i, load in enumerate(foreign) if load < CLEAN_LOAD]
    return {"level": level, "input": [h, w], "output": [2 * h, 2 * w], "rounds": rounds, "macs": macs,
            "max_abs_diff_vs_reference": max_diff, "max_abs_diff_vs_float64": diff_fp64,
            "foreign_load_per_round": foreign,
            "clean_rounds": clean, "repeat_s": repeat_s, "forward_s": fwd, "forward_backward_s": both,
            "forward_calls_s": fwd_calls, "forward_backward_calls_s": both_calls, "forward_cold_s": fwd_cold,
            "forward_backward_cold_s": both_cold}


def _count_range(calls: list[list[float]]) -> str:
    """How many timed calls the rounds had: "12" or "9-14"."""
    counts = [len(c) for c in calls]
    return str(counts[0]) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def summarise(result: dict, matmul: float) -> list[dict]:
    """Medians over the clean rounds when there are at least three, otherwise over all rounds."""
    rows = []
    keep = result["clean_rounds"] if len(result["clean_rounds"]) >= 3 else list(range(result["rounds"]))
    result["summarised_rounds"] = keep
    med_f = {n: statistics.median(v[i] for i in keep) for n, v in result["forward_s"].items()}
    med_b = {n: statistics.median(v[i] for i in keep) for n, v in result["forward_backward_s"].items()}
    for n in med_f:
        gf = 2 * result["macs"][n] / med_f[n] / 1e9
        gb = 6 * result["macs"][n] / med_b[n] / 1e9
        rows.append({
            "level": result["level"], "impl": n, "forward_ms": 1e3 * med_f[n], "forward_backward_ms": 1e3 * med_b[n],
            "forward_all_rounds_ms": 1e3 * statistics.median(result["forward_s"][n]),
            "forward_backward_all_rounds_ms": 1e3 * statistics.median(result["forward_backward_s"][n]),
            "forward_min_ms": 1e3 * min(result["forward_s"][n]),
            "forward_backward_min_ms": 1e3 * min(result["forward_backward_s"][n]),
            "forward_cold_ms": 1e3 * statistics.median(result["forward_cold_s"][n][i] for i in keep),
            "forward_backward_cold_ms": 1e3 * statistics.median(result["forward_backward_cold_s"][n][i] for i in keep),
            "forward_calls_per_round": _count_range(result["forward_calls_s"][n]),
            "forward_backward_calls_per_round": _count_range(result["forward_backward_calls_s"][n]),
            "forward_speedup_vs_official": med_f["official"] / med_f[n],
            "forward_speedup_vs_reference": med_f["reference"] / med_f[n],
            "forward_backward_speedup_vs_official": med_b["official"] / med_b[n],
            "forward_backward_speedup_vs_reference": med_b["reference"] / med_b[n],
            "forward_gflops": gf, "forward_backward_gflops": gb,
            "forward_fraction_of_matmul": gf / matmul, "forward_backward_fraction_of_matmul": gb / matmul,
        })
    return rows


def render(report: dict) -> str:
    env = report["environment"]
    what = ("LDA-AQU module (and CARAFE, DySample modules), forward and forward + backward to x and every parameter"
            if report.get("workload") == "module" else "LDA-AQU sampling attention")
    lines = [
        f"{what}, {env['device']} ({env['gpu'] or env['cpu']}, {env['cpu_capability']}, {env['threads']} threads), "
        f"torch {env['torch']}, float32, batch 1, C=256, 64 q/k channels, 2 groups, 9 points",
        f"fp32 matmul rate (2048^2 mm): {report['matmul_gflops']:.1f} GFLOP/s;  memory: {report['memory_method']}",
        "",
        "| level | impl | fwd ms | x official | x reference | fwd+bwd ms | x official | x reference | fwd GFLOP/s "
        "(% mm) | fwd+bwd GFLOP/s (% mm) | fwd extra MB | fwd+bwd extra MB | max diff | vs float64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["summary"]:
        mem = report["memory"].get(f"{row['level']}:{row['impl']}", {})

        def mb(mode: str, mem: dict = mem) -> str:
            m = mem.get(mode, {})
            return f"{m['extra_bytes'] / 2**20:.1f}" if "extra_bytes" in m else m.get("error", "-")

        diff = report["levels"][row["level"]]["max_abs_diff_vs_reference"][row["impl"]]
        diff64 = report["levels"][row["level"]].get("max_abs_diff_vs_float64", {}).get(row["impl"])
        lines.append(
            f"| {row['level']} | {row['impl']} | {row['forward_ms']:.1f} | {row['forward_speedup_vs_official']:.1f} | "
            f"{row['forward_speedup_vs_reference']:.1f} | {row['forward_backward_ms']:.1f} | "
            f"{row['forward_backward_speedup_vs_official']:.1f} | {row['forward_backward_speedup_vs_reference']:.1f} | "
            f"{row['forward_gflops']:.2f} ({100 * row['forward_fraction_of_matmul']:.1f}%) | "
            f"{row['forward_backward_gflops']:.2f} ({100 * row['forward_backward_fraction_of_matmul']:.1f}%) | "
            f"{mb('fwd')} | {mb('fwd+bwd')} | {'-' if diff is None else f'{diff:.1e}'} | "
            f"{'-' if diff64 is None else f'{diff64:.1e}'} |")
    rounds = ", ".join(f"{lv}: {len(r['summarised_rounds'])} of {r['rounds']}" for lv, r in report["levels"].items())
    lines += ["", f"Medians over interleaved rounds ({rounds} rounds: those in which other processes kept less than "
              f"{CLEAN_LOAD} core busy on average, when at least 3 were); ratios are ratios of medians. 'extra MB' = "
              "peak memory of the call minus its output (and input gradients). 'max diff': largest difference "
              "from the reference (float32); 'vs float64': from the reference computed in float64 (float32 "
              "round-off alone).", "",
              "A round's value is the median of its timed back-to-back calls (after one untimed cold call; "
              "calls per round below). Every round (medians over all rounds, loaded ones included), the fastest "
              "round, and the untimed first call of each round, right after the other implementations (medians "
              "over the same rounds as the headline), in ms:", "",
              "| level | impl | fwd median | fwd+bwd median | fwd min | fwd+bwd min | fwd cold | fwd+bwd cold | "
              "timed calls per round (fwd, fwd+bwd) |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['level']} | {row['impl']} | {row['forward_all_rounds_ms']:.1f} | "
              f"{row['forward_backward_all_rounds_ms']:.1f} | {row['forward_min_ms']:.1f} | "
              f"{row['forward_backward_min_ms']:.1f} | {row['forward_cold_ms']:.1f} | "
              f"{row['forward_backward_cold_ms']:.1f} | {row['forward_calls_per_round']}, "
              f"{row['forward_backward_calls_per_round']} |" for row in report["summary"]]
    loads = "; ".join(f"{lv}: " + ", ".join(f"{x:.2f}" for x in r["foreign_load_per_round"])
                      for lv, r in report["levels"].items())
    lines += ["", f"Cores kept busy by other processes, per round: {loads}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--module", action="store_true",
                        help="the whole module (and CARAFE, DySample) instead of the sampling-attention op")
    parser.add_argument("--levels", default="P5,P4,P3,P2")
    parser.add_argument("--budget-s", type=float, default=60.0, help="time per level after the minimum rounds")
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--max-rounds", type=int, default=15)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--settle-s", type=float, default=None,
                        help="pause before each implementation's calls in a round, so that a host's reclaim of "
                             "memory freed by the previous implementation happens before them (module docstring); "
                             "default 2.5 on CPU, 0 on CUDA")
    parser.add_argument("--repeat-s", type=float, default=0.5,
                        help="per round and implementation, time back-to-back calls (after the untimed cold one) "
                             "until they add up to this many seconds; the round's value is their median")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default results/lda_aqu_backends_<device>.json)")
    parser.add_argument("--force", "--overwrite", dest="force", action="store_true",
                        help="replace existing result files")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_probe:
        level, impl, mode = args.memory_probe.split(":")
        print(json.dumps(measure_memory_here(level, impl, mode, args.device, args.module)))
        return

    stem = "lda_aqu_module" if args.module else "lda_aqu_backends"
    out = args.out or ROOT / "results" / f"{stem}_{args.device}.json"
    for path in (out, out.with_suffix(".md")):
        if path.exists() and not args.force:
            raise SystemExit(f"{path} exists; pass --force to replace it")
    impls = implementations(args.device, args.module)
    levels = split_list(args.levels) or []
    report: dict = {"schema_version": SCHEMA_VERSION, "workload": "module" if args.module else "op",
                    "environment": environment(args.device, args.threads),
                    "implementations": list(impls), "levels": {}, "summary": [], "memory": {},
                    "memory_method": ("CUDA allocator peak minus allocated before the call" if args.device == "cuda"
                                      else "VmHWM (reset via /proc/self/clear_refs) minus RSS before the call, "
                                           "fresh process per measurement")}
    report["matmul_gflops"] = matmul_gflops(args.device)
    print(f"fp32 matmul: {report['matmul_gflops']:.1f} GFLOP/s", flush=True)
    settle_s = args.settle_s if args.settle_s is not None else (2.5 if args.device == "cpu" else 0.0)
    for level in levels:
        result = bench_level(level, impls, args.device, args.budget_s, args.min_rounds, args.max_rounds, settle_s,
                             args.repeat_s, args.module)
        report["levels"][level] = result
        rows = summarise(result, report["matmul_gflops"])
        report["summary"] += rows
        for row in rows:
            print(f"{level} {row['impl']:>9}: fwd {row['forward_ms']:9.1f} ms  fwd+bwd {row['forward_backward_ms']:9.1f} ms",
                  flush=True)
    if not args.no_memory:
        for level in levels:
            for impl in impls:
                report["memory"][f"{level}:{impl}"] = {
                    mode: measure_memory(level, impl, mode, args.device, args.threads, args.module)
                    for mode in ("fwd", "fwd+bwd")}
                print(f"memory {level} {impl}: {report['memory'][f'{level}:{impl}']}", flush=True)
    table = render(report)
    print(table)
    write_atomic(json.dumps(report, indent=1), out, force=args.force)
    write_atomic(table + "\n", out.with_suffix(".md"), force=args.force)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
