"""Device and dtype names as users type them, resolved to what torch takes."""

from __future__ import annotations

import torch

from .errors import UsageError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                                  "fp64": torch.float64}


def resolve_device(device: str, option: str = "--device") -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; unavailable devices are a usage error
    (the message names ``option``)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"{option}: unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option}: device {device!r} requested but CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"{option}: device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif parsed.type != "cpu":
        raise UsageError(f"{option}: unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return str(parsed)


def resolve_dtype(name: str, option: str = "--dtype") -> torch.dtype:
    """``"bf16"`` -> ``torch.bfloat16``."""
    if name not in DTYPES:
        raise UsageError(f"{option}: unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]
