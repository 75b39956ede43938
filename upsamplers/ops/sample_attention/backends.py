"""Backends of ``lda_aqu::sample_attention``: what exists, what works here, what ``auto`` means.

* ``reference``: plain PyTorch (grid_sample), the oracle; works everywhere.
* ``cpp``: C++ CPU kernels, built on first use (see :mod:`upsamplers.ops.sample_attention.cpp`).
* ``triton``: Triton kernels for CUDA tensors; on CPU tensors only under ``TRITON_INTERPRET=1``
  (the Triton interpreter, for tests).
* ``auto``: ``triton`` on CUDA, ``cpp`` on CPU, ``reference`` otherwise or when those cannot
  run (a failed C++ build warns once). The environment variable ``LDA_BENCH_BACKEND`` replaces
  what ``auto`` means for the whole process; an explicit backend name still wins over it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

from torch import Tensor

from . import cpp
from .reference import sample_attention_reference, sample_attention_reference_backward

ENV_BACKEND = "LDA_BENCH_BACKEND"

Forward = Callable[..., Tensor]
Backward = Callable[..., tuple]


def _triton_forward(*args, **kwargs) -> Tensor:
    from . import triton_kernels  # imported on first use: it decides interpreted vs compiled then

    return triton_kernels.forward(*args, **kwargs)


def _triton_backward(*args, **kwargs) -> tuple:
    from . import triton_kernels

    return triton_kernels.backward(*args, **kwargs)


# name -> forward(query, key, value, offsets, embedding, groups, num_heads)
BACKENDS: dict[str, Forward] = {
    "reference": sample_attention_reference,
    "cpp": cpp.forward,
    "triton": _triton_forward,
}
# name -> backward(grad, query, key, value, offsets, embedding, groups, num_heads)
#         -> (d_query, d_key, d_value, d_offsets, d_embedding or None)
BACKWARDS: dict[str, Backward] = {
    "reference": sample_attention_reference_backward,
    "cpp": cpp.backward,
    "triton": _triton_backward,
}


def backend_names() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


def check_backend_name(backend: str) -> str:
    """Validate a backend name without building or importing anything."""
    if not isinstance(backend, str) or backend not in backend_names():
        raise ValueError(f"unknown LDA-AQU backend {backend!r}; valid: {', '.join(backend_names())}")
    return backend


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the interpreter (fixed when the kernel module is imported)."""
    import sys

    module = sys.modules.get(f"{__package__}.triton_kernels")
    if module is not None:
        return module.INTERPRET
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run on ``device_type`` tensors right now, or None if it can."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"the cpp backend runs on CPU tensors, not {device_type}"
        return cpp.unavailable_reason()
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device_type == "cuda":
            import torch

            return None if torch.cuda.is_available() else "no CUDA device is available"
        if device_type == "cpu" and triton_interpreted():
            return None
        return f"the triton backend runs on CUDA tensors (on {device_type} tensors only under TRITON_INTERPRET=1)"
    raise ValueError(f"unknown LDA-AQU backend {backend!r}; valid: {', '.join(backend_names())}")


def available_backends(device_type: str = "cpu") -> tuple[str, ...]:
    """Backends that work for ``device_type`` tensors in this process (may build the C++ code)."""
    return tuple(name for name in BACKENDS if unavailable_reason(name, device_type) is None)


def _auto(device_type: str) -> str:
    if device_type == "cuda" and unavailable_reason("triton", "cuda") is None:
        return "triton"
    if device_type == "cpu" and cpp.is_available():  # warns once when the build failed
        return "cpp"
    return "reference"


def resolve_backend(backend: str = "auto", device_type: str = "cpu") -> str:
    """Map ``auto`` (or an explicit name) to the backend that will run on ``device_type`` tensors.

    An explicit name that cannot run here raises ``RuntimeError`` saying why, rather than silently
    measuring something else.
    """
    check_backend_name(backend)
    if backend == "auto":
        override = os.environ.get(ENV_BACKEND, "").strip()
        if not override or override == "auto":
            return _auto(device_type)
        if override not in BACKENDS:
            raise ValueError(f"{ENV_BACKEND}={override!r} is not an LDA-AQU backend; valid: {', '.join(backend_names())}")
        backend = override
    reason = unavailable_reason(backend, device_type)
    if reason is not None:
        raise RuntimeError(f"LDA-AQU backend {backend!r} cannot run on {device_type} tensors: {reason}")
    return backend
