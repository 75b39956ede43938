"""What a report records about the machine and software, and what makes timings unreliable."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .reports import SCHEMA_VERSION

# The repository root when running from a checkout (lda_bench/core/environment.py -> ../..).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def command_line() -> str:
    """The command as the user typed it (``lda-bench ...`` rather than a long script path)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("lda-bench", "__main__.py", "cli.py"):
        argv[0] = "lda-bench"
    return shlex.join(argv)


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the lda-bench source tree (None when not a git checkout)."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def collect_environment(device: str | None = None) -> dict[str, Any]:
    """Software, hardware and settings that a result depends on."""
    cuda_available = torch.cuda.is_available()
    env: dict[str, Any] = {
        "lda_bench": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "torch_debug_build": bool(torch.version.debug),
        "cuda": torch.version.cuda,
        "cuda_available": cuda_available,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_total_bytes(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        env["torchvision"] = None
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if cuda_available:
        index = torch.device(device).index if device and device.startswith("cuda") else None
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        env["device_name"] = props.name
        env["device_memory_bytes"] = props.total_memory
        env["device_capability"] = f"{props.major}.{props.minor}"
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    if device is None or device == "cpu":
        env.setdefault("device_name", env["cpu_model"])
    return env


def report_header(kind: str, device: str | None = None, command: str | None = None) -> dict[str, Any]:
    """The fields every JSON report starts with."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else command_line(),
        "git": git_state(),
        "env": collect_environment(device),
    }


def _busy_processes(interval: float = 0.5, threshold: float = 0.25) -> list[tuple[str, float]]:
    """Other processes using more than ``threshold`` of a core, sampled over ``interval`` seconds."""
    me = os.getpid()

    def snapshot() -> dict[int, tuple[str, int]]:
        ticks: dict[int, tuple[str, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            name = raw[raw.find("(") + 1 : raw.rfind(")")]
            fields = raw[raw.rfind(")") + 2 :].split()
            ticks[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))  # utime + stime
        return ticks

    if not Path("/proc/self/stat").exists():
        return []
    before = snapshot()
    time.sleep(interval)
    after = snapshot()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, t1) in after.items():
        if pid in before:
            share = (t1 - before[pid][1]) / hz / interval
            if share >= threshold:
                busy.append((f"{name} (pid {pid})", share))
    return sorted(busy, key=lambda item: -item[1])


def timing_warnings(env: dict[str, Any] | None = None, sample_processes: bool = True) -> list[str]:
    """Conditions that make latency numbers unreliable on this machine right now."""
    env = env or collect_environment()
    warnings: list[str] = []
    cpus = env.get("cpu_count") or 1
    if env.get("torch_debug_build"):
        warnings.append("torch is a debug build: timings are not representative")
    threads = env.get("threads") or 1
    if threads > cpus:
        warnings.append(f"torch uses {threads} threads on {cpus} CPUs: oversubscription inflates timings")
    omp = env.get("thread_env", {}).get("OMP_NUM_THREADS")
    if omp is not None and omp.isdigit() and int(omp) != threads:
        warnings.append(f"OMP_NUM_THREADS={omp} but torch uses {threads} threads")
    try:
        load1 = os.getloadavg()[0]
        if load1 > 0.5 * cpus:
            warnings.append(f"load average {load1:.2f} on {cpus} CPUs: other work competes for the cores")
    except OSError:
        pass
    if sample_processes:
        for name, share in _busy_processes():
            warnings.append(f"busy process {name} uses {share:.0%} of a core")
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    try:
        value = governor.read_text().strip()
        if value not in ("performance",):
            warnings.append(f"CPU frequency governor is {value!r}, not 'performance': clocks may vary")
    except OSError:
        pass
    if env.get("cuda_available") and env.get("cudnn_benchmark"):
        warnings.append("cudnn.benchmark is on: conv algorithms may differ from run to run")
    return warnings


def describe_environment() -> dict[str, Any]:
    """What ``lda-bench env`` shows: the environment a report records (plus the LDA-AQU backends
    that work on this CPU), the git state, and the conditions that make timings unreliable now."""
    from upsamplers.ops import available_backends

    info = collect_environment()
    warnings = timing_warnings(info)
    info["lda_aqu_backends_cpu"] = list(available_backends("cpu"))
    return {"env": info, "git": git_state(), "warnings": warnings}
