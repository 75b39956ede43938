"""Feature upsamplers for dense prediction behind one registry and one interface.

>>> import torch, upsamplers
>>> up = upsamplers.build("lda_aqu", channels=256)
>>> up(torch.randn(1, 256, 13, 21)).shape
torch.Size([1, 256, 26, 42])

Every upsampler is an ``nn.Module`` called as ``module(x, guide=None)``; guided ones
(``spec.needs_guide``) need the high-resolution feature as ``guide``.
"""

from __future__ import annotations

from .base import Upsampler
from .registry import ENTRY_POINT_GROUP, UpsamplerSpec, available, build, get_spec, names, register, unregister

# Importing the modules registers the built-ins.
from . import interpolation, deconv, pixel_shuffle, carafe, dysample, lda_aqu  # noqa: E402,F401  isort:skip
from . import indexnet, a2u, fade, sapa, freqfusion  # noqa: E402,F401  isort:skip

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Upsampler",
    "UpsamplerSpec",
    "available",
    "build",
    "get_spec",
    "names",
    "register",
    "unregister",
]
