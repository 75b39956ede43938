"""CARAFE-style reassembly in plain PyTorch, with the mmcv ``carafe`` op's semantics.

Output pixel (p, q) is the weighted sum of the k x k window of ``x`` centred on the source pixel
(p // s, q // s); the window index is row-major (the order of ``F.unfold``); neighbours outside
the image contribute zero and the weights are *not* renormalised at the border. Channel groups
split the channels into contiguous blocks, each with its own kernel.

Instead of materialising the k^2 x C x H x W unfolded tensor, the sum runs over the k^2 taps, each a
shifted view of the zero-padded input multiplied by that tap's weight plane. Peak extra memory is
one output-sized accumulator per row tile; ``max_bytes`` bounds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MAX_BYTES = 512 * 2**20


def rows_per_tile(total_rows: int, bytes_per_row: int, max_bytes: int) -> int:
    """How many rows fit into ``max_bytes`` (at least one)."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    return max(1, min(total_rows, max_bytes // max(1, bytes_per_row)))


def carafe_reassemble(
    x: Tensor, kernels: Tensor, kernel_size: int, scale: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> Tensor:
    """Reassemble ``x`` (B x C x H x W) with per-output-pixel ``kernels`` (B x G*k*k x sH x sW)."""
    b, c, h, w = x.shape
    k, s = kernel_size, scale
    taps = k * k
    if kernels.dim() != 4 or kernels.shape[0] != b or kernels.shape[2:] != (h * s, w * s):
        raise ValueError(
            f"kernels must be B x G*{taps} x {h * s} x {w * s} for input {tuple(x.shape)}, got {tuple(kernels.shape)}"
        )
    if kernels.shape[1] % taps:
        raise ValueError(f"kernel channels ({kernels.shape[1]}) must be a multiple of k*k = {taps}")
    groups = kernels.shape[1] // taps
    if c % groups:
        raise ValueError(f"channels ({c}) must be divisible by the kernel groups ({groups})")
    r = k // 2
    padded = F.pad(x, (r, r, r, r)).view(b, groups, c // groups, h + 2 * r, w + 2 * r)
    ker = kernels.view(b, groups, taps, h, s, w, s)

    bytes_per_row = b * c * s * s * w * x.element_size() * 2  # accumulator + one product term
    tile = rows_per_tile(h, bytes_per_row, max_bytes)
    pieces = []
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        acc = None
        for t in range(taps):
            dy, dx = divmod(t, k)
            shifted = padded[:, :, :, r0 + dy : r1 + dy, dx : dx + w].unsqueeze(4).unsqueeze(6)
            weight = ker[:, :, t : t + 1, r0:r1]
            if acc is None:
                acc = shifted * weight
            else:
                acc.addcmul_(shifted, weight)
        assert acc is not None
        pieces.append(acc.reshape(b, c, (r1 - r0) * s, w * s))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
