"""One side of an A/B gate run: a Python process that measures cases on request.

The parent (:class:`Worker`) starts ``python -m lda_bench.regress.worker`` with ``PYTHONPATH``
pointing at a folder whose ``upsamplers`` is the tree under test, so the process imports that
tree's upsamplers (and loads its C++ extension from the shared cache, building it on first use),
while the measuring code (this harness) is the same on both sides. Requests and answers are JSON lines on
stdin/stdout; anything else the process prints goes to stderr.

Requests (``op``): ``hello`` (threads; answers where ``upsamplers`` came from), ``prepare``
(a case: builds it with seeded weights, counts parameters and MACs, warms it up; answers the
fastest warm-up call), ``time`` (runs ``calls`` back-to-back calls; answers the seconds),
``release``, ``exit``. A failing request answers ``{"error": ...}`` and the process goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

from lda_bench.core.errors import CommandError

PREPARE_TIMEOUT_S = 1200.0  # includes building the C++ extension on first use
EXIT_TIMEOUT_S = 10.0


class WorkerError(CommandError):
    """A side could not do what was asked (the case fails on that side; the run goes on)."""


class WorkerDied(WorkerError):
    """The side's process ended or stopped answering."""


# ------------------------------------------------------------------------------ the child side


class _Session:
    def __init__(self) -> None:
        self.run = None  # the prepared case's forward
        self.device = "cpu"

    def hello(self, request: dict[str, Any]) -> dict[str, Any]:
        import torch

        import upsamplers
        from lda_bench.profiling.allocator import stabilize_malloc

        if request.get("threads"):
            torch.set_num_threads(int(request["threads"]))
        allocator = stabilize_malloc()
        return {"upsamplers": str(Path(upsamplers.__file__).resolve().parent), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "allocator": allocator, "pid": os.getpid()}

    def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        import torch

        from lda_bench.profiling.cases import Case, seeded_module
        from lda_bench.profiling.runner import Settings, static_fields
        from lda_bench.profiling.timing import synchronize, time_calls

        case = Case(**request["case"])
        module = seeded_module(case)
        answer: dict[str, Any] = {}
        try:
            described = static_fields(case, module, Settings(metrics=("params", "flops")), {})
        except Exception as exc:  # noqa: BLE001 - an older tree may lack what the MAC counter needs
            described = static_fields(case, module, Settings(metrics=("params",)), {})
            answer["note"] = f"MACs not counted: {type(exc).__name__}: {exc}".splitlines()[0]
        answer.update({k: described.get(k) for k in ("backend", "params", "macs")})
        inputs = case.inputs()

        def run() -> None:
            with torch.inference_mode():
                module(*inputs)

        self.run, self.device = run, case.device
        synchronize(case.device)
        answer["call_s"] = min(time_calls(run, 1, case.device) for _ in range(max(1, int(request.get("warmup", 2)))))
        return answer

    def time(self, request: dict[str, Any]) -> dict[str, Any]:
        from lda_bench.profiling.timing import time_calls

        if self.run is None:
            raise RuntimeError("no case prepared")
        return {"seconds": time_calls(self.run, int(request["calls"]), self.device)}

    def release(self, request: dict[str, Any]) -> dict[str, Any]:
        self.run = None
        return {}


def serve(requests: IO[str], answers: IO[str]) -> None:
    """Answer requests until ``exit`` or the end of ``requests``."""
    session = _Session()
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        if op == "exit":
            break
        try:
            handler = getattr(session, op) if op in ("hello", "prepare", "time", "release") else None
            if handler is None:
                raise ValueError(f"unknown request {op!r}")
            answer = handler(request)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which records the case as failed
            answer = {"error": f"{type(exc).__name__}: {exc}".strip(), "traceback": traceback.format_exc(limit=6)}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> None:
    # The protocol owns the real stdout; whatever else prints (warnings, builds) goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin, protocol)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent cleans up
        pass


# ----------------------------------------------------------------------------- the parent side


class Worker:
    """A running side: ``request`` sends one request and waits for its answer."""

    def __init__(self, name: str, python_path: Path, cwd: Path) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"  # the process's stderr (build output, warnings)
        full_env = dict(os.environ)
        # The tree under test first; the harness (this lda_bench) stays importable as installed.
        harness_root = str(Path(__file__).resolve().parents[2])
        full_env["PYTHONPATH"] = os.pathsep.join([str(python_path), harness_root])
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lda_bench.regress.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True, env=full_env, cwd=cwd)
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def last_log_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    def request(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        if self.process.poll() is not None:
            raise WorkerDied(f"the {self.name} process ended (exit {self.process.returncode}){self.last_log_line()}")
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(f"the {self.name} process ended (exit {self.process.poll()}){self.last_log_line()}") from None
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise WorkerDied(f"the {self.name} process did not answer {op!r} within {timeout:.0f} s") from None
        if line is None:
            raise WorkerDied(f"the {self.name} process ended (exit {self.process.wait()}){self.last_log_line()}")
        answer = json.loads(line)
        if "error" in answer:
            raise WorkerError(f"{self.name}: {answer['error']}")
        return answer

    def prepare(self, case: Any, warmup: int = 2) -> dict[str, Any]:
        return self.request("prepare", PREPARE_TIMEOUT_S, case=dataclasses.asdict(case), warmup=warmup)

    def close(self) -> None:
        """Ask the process to exit; kill it if it does not."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.process.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    main()
