"""Operators behind the upsamplers, one folder or module per op.

* :mod:`.sample_attention`: LDA-AQU's heavy middle (deformable bilinear sampling of keys and
  values, softmax over the sampled points, weighted sum), the PyTorch operator
  ``lda_aqu::sample_attention`` with ``reference``, ``cpp`` and ``triton`` backends;
* :mod:`.reassemble`: CARAFE-style reassembly (``upsamplers::carafe_reassemble``), used by CARAFE,
  A2U, FADE and FreqFusion;
* :mod:`.similarity`: SAPA-style local similarity and its deformable variant;
* :mod:`.lda_aqu_module`: the whole LDA-AQU module as one operator, ``lda_aqu::module_forward``,
  fused on CPU (``cpp``) and CUDA (``triton``).

:func:`fvcore_handles` and :func:`dispatch_formulas` gather the FLOP accounting of every custom op
here, so a FLOP counter needs no list of its own. :func:`cpu_cache_info`, :func:`set_cpu_cache_limit`
and :func:`empty_cpu_cache` manage the C++ kernels' cache of forward-output pages.
"""

from __future__ import annotations

from typing import Any, Callable

from . import lda_aqu_module, reassemble  # noqa: F401 - lda_aqu_module registers lda_aqu::module_forward
from .lda_aqu_module import flops as lda_aqu_module_flops
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
from .sample_attention.cpp import CpuCacheInfo, cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit


def fvcore_handles(elementwise: bool = True) -> dict[str, Callable[[list[Any], list[Any]], Any]]:
    """fvcore op handles (traced op name -> handle) of every custom op of this package; with
    ``elementwise`` False, ops that fuse elementwise layers leave those out."""
    return {**reassemble.FVCORE_HANDLES, **sample_attention_flops.FVCORE_HANDLES,
            lda_aqu_module_flops.OP_NAME: lda_aqu_module_flops.fvcore_handle(elementwise)}


def dispatch_formulas(elementwise: bool = True) -> dict[Any, Callable[..., int]]:
    """FLOP formulas for ``torch.utils.flop_counter.FlopCounterMode(custom_mapping=...)`` of the ops
    whose count depends on the elementwise policy (the others register theirs globally)."""
    import torch

    return {torch.ops.lda_aqu.module_forward: lda_aqu_module_flops.dispatch_formula(elementwise)}


__all__ = [
    "BACKENDS",
    "BACKWARDS",
    "CpuCacheInfo",
    "ENV_BACKEND",
    "available_backends",
    "backend_names",
    "carafe_reassemble",
    "check_backend_name",
    "cpu_cache_info",
    "dispatch_formulas",
    "empty_cpu_cache",
    "fvcore_handles",
    "resolve_backend",
    "sample_attention",
    "sample_attention_reference",
    "set_cpu_cache_limit",
]
