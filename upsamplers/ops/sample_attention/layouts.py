"""Memory layouts of the tensors that LDA-AQU's op returns and reads.

The op's output is B x C x Ho x Wo in ``torch.channels_last`` memory format (see
:mod:`upsamplers.ops.sample_attention.op`); gradients flowing back into it come NCHW or channels-last, and the
kernels read both in place.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_channels_last(t: Tensor) -> Tensor:
    """``t`` in channels-last memory format (itself when it already is)."""
    return t if t.is_contiguous(memory_format=torch.channels_last) else t.contiguous(memory_format=torch.channels_last)


def nchw_or_channels_last(t: Tensor) -> Tensor:
    """``t`` itself when it is dense NCHW or dense channels-last, else an NCHW copy."""
    return t if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) else t.contiguous()
