"""The catalogue of registered upsamplers that ``lda-bench list`` shows."""

from __future__ import annotations

from typing import Any

import torch

import upsamplers
from upsamplers.ops import available_backends


def list_upsamplers(channels: int = 256) -> list[dict[str, Any]]:
    """One row per registered upsampler: name, guide, trainable parameters at ``channels``
    (None when a plugin cannot build at that size), declared backends, those that run here,
    reference and source."""
    runnable = set(available_backends("cpu"))
    if torch.cuda.is_available():
        runnable |= set(available_backends("cuda"))
    rows = []
    for spec in upsamplers.available():
        try:
            params: int | None = sum(p.numel() for p in upsamplers.build(spec.name, channels).parameters())
        except Exception:  # noqa: BLE001 - a plugin that cannot build at this size still gets listed
            params = None
        rows.append({
            "name": spec.name,
            "needs_guide": spec.needs_guide,
            "params": params,
            "backends": list(spec.backends),
            "backends_available_here": [b for b in spec.backends if b == "pytorch" or b in runnable],
            "reference": spec.reference,
            "source": spec.source,
        })
    return rows
