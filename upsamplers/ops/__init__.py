"""Operators behind the upsamplers, one folder or module per op.

* :mod:`.sample_attention`: LDA-AQU's heavy middle (deformable bilinear sampling of keys and
  values, softmax over the sampled points, weighted sum), the PyTorch operator
  ``lda_aqu::sample_attention`` with ``reference``, ``cpp`` and ``triton`` backends;
* :mod:`.reassemble`: CARAFE-style reassembly (``upsamplers::carafe_reassemble``), used by CARAFE,
  A2U, FADE and FreqFusion;
* :mod:`.similarity`: SAPA-style local similarity and its deformable variant.

:func:`fvcore_handles` gathers the fvcore op handles of every custom op here, so a FLOP counter
needs no list of its own.
"""

from __future__ import annotations

from typing import Any, Callable

from . import reassemble
from .reassemble import carafe_reassemble
from .sample_attention import (
    BACKENDS,
    BACKWARDS,
    ENV_BACKEND,
    available_backends,
    backend_names,
    check_backend_name,
    resolve_backend,
    sample_attention,
    sample_attention_reference,
)
from .sample_attention import flops as sample_attention_flops


def fvcore_handles() -> dict[str, Callable[[list[Any], list[Any]], Any]]:
    """fvcore op handles (traced op name -> handle) of every custom op of this package."""
    return {**reassemble.FVCORE_HANDLES, **sample_attention_flops.FVCORE_HANDLES}


__all__ = [
    "BACKENDS",
    "BACKWARDS",
    "ENV_BACKEND",
    "available_backends",
    "backend_names",
    "carafe_reassemble",
    "check_backend_name",
    "fvcore_handles",
    "resolve_backend",
    "sample_attention",
    "sample_attention_reference",
]
