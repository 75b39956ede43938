"""Helpers shared by the oracle's checks: numbers, images, quiet calls."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
import torch

SEED = 0


def max_abs(a: Any, b: Any) -> float:
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).double()
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).double()
    if a.shape != b.shape:
        return math.inf
    return float((a - b).abs().max()) if a.numel() else 0.0


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def everything(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())


def synthetic_image(height: int, width: int, seed: int = SEED) -> np.ndarray:
    """A BGR uint8 image with smooth shading and a few solid shapes (edges for the detectors to find)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(xx / (37 + 11 * c) + yy / (53 + 7 * c) + c) for c in range(3)], axis=-1)
    for _ in range(12):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(10, height / 4), rng.uniform(10, width / 4)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if rng.random() < 0.5 else \
            (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        img[inside] = rng.uniform(0, 255, size=3)
    noise = rng.normal(0, 6, size=img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)

