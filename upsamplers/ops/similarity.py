"""Similarity-based reassembly (SAPA and its deformable variant) in plain PyTorch.

These follow the official CUDA extensions (poppinace/sapa ``sim``/``atn``; tiny-smart/sapa ``qk``/``av``
and ``deform_qk``/``deform_av``) index for index:

* ``local_similarity`` (``qk``): for output pixel (p, q) and window tap t = dy*k + dx, the dot product
  of the query at (p, q) with the key at (p // s + dy - r, q // s + dx - r). A key outside the image
  scores exactly 0 (so exp(0) still enters the softmax) -- the same as zero-padding the keys.
* the aggregation (``av``) is CARAFE reassembly with one group: out-of-image values contribute 0.
* ``deformable_similarity_upsample`` (``deform_qk`` + softmax + ``deform_av``): per offset group g and
  point n, keys and values are sampled bilinearly at (p // s + dy, q // s + dx) in low-res pixel
  coordinates (pixel centres at integers, no base grid), each of the four corners outside the image
  reading 0; channels of q, k and v are split into ``groups`` contiguous blocks.

Memory: nothing of size k*k x C x sH x sW is ever materialised. Work proceeds over row tiles of the
output whose working set stays under ``max_bytes`` (one output-sized accumulator and one product term
per tile), so the tiled and untiled results are the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reassemble import DEFAULT_MAX_BYTES, carafe_reassemble, rows_per_tile


def _check_pair(query: Tensor, key: Tensor, scale: int) -> None:
    if query.dim() != 4 or key.dim() != 4:
        raise ValueError(f"query and key must be 4-D, got {tuple(query.shape)} and {tuple(key.shape)}")
    b, d, h, w = key.shape
    if query.shape != (b, d, h * scale, w * scale):
        raise ValueError(
            f"query must be {b} x {d} x {h * scale} x {w * scale} for key {tuple(key.shape)} at scale {scale}, "
            f"got {tuple(query.shape)}"
        )


def local_similarity(
    query: Tensor, key: Tensor, kernel_size: int, scale: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> Tensor:
    """Window dot products, B x k*k x sH x sW, of ``query`` (B x d x sH x sW) with ``key`` (B x d x H x W)."""
    _check_pair(query, key, scale)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size}")
    b, d, h, w = key.shape
    k, s, r = kernel_size, scale, kernel_size // 2
    padded = F.pad(key, (r, r, r, r))  # zero keys give the official score 0 outside the image
    q6 = query.view(b, d, h, s, w, s)
    # One product term of d channels per tap plus the k*k scores of the tile.
    bytes_per_row = b * s * s * w * query.element_size() * (d + k * k)
    tile = rows_per_tile(h, bytes_per_row, max_bytes)
    pieces = []
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        qt = q6[:, :, r0:r1]
        taps = []
        for t in range(k * k):
            dy, dx = divmod(t, k)
            kt = padded[:, :, r0 + dy : r1 + dy, dx : dx + w].unsqueeze(3).unsqueeze(5)
            taps.append((qt * kt).sum(1))
        pieces.append(torch.stack(taps, 1).reshape(b, k * k, (r1 - r0) * s, w * s))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


def similarity_upsample(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: int,
    scale: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Tensor:
    """SAPA: softmax over the window similarities, then reassembly of ``value`` (B x C x H x W)."""
    if value.dim() != 4 or value.shape[0] != key.shape[0] or value.shape[2:] != key.shape[2:]:
        raise ValueError(f"value must be B x C x {key.shape[2]} x {key.shape[3]}, got {tuple(value.shape)}")
    attn = F.softmax(local_similarity(query, key, kernel_size, scale, max_bytes), dim=1)
    return carafe_reassemble(value, attn, kernel_size, scale, max_bytes)


def _sampling_grid(offsets: Tensor, rows: range, height: int, width: int, scale: int) -> Tensor:
    """Normalised grid_sample coordinates, B x G*P x rows x sW x 2 (x first), for the output ``rows``.

    Offsets are (x, y) pairs in low-res pixels around the parent pixel (p // s, q // s);
    align_corners=False puts pixel i at (2i + 1) / size - 1.
    """
    b, c, _, wo = offsets.shape
    off = offsets[:, :, rows.start : rows.stop].reshape(b, c // 2, 2, len(rows), wo)
    ys = (torch.arange(rows.start, rows.stop, device=offsets.device) // scale).to(offsets.dtype)
    xs = (torch.arange(wo, device=offsets.device) // scale).to(offsets.dtype)
    gx = (2 * (xs.view(1, 1, 1, -1) + off[:, :, 0]) + 1) / width - 1
    gy = (2 * (ys.view(1, 1, -1, 1) + off[:, :, 1]) + 1) / height - 1
    return torch.stack((gx, gy), dim=-1)


def _sample_group_point(source: Tensor, grid: Tensor, groups: int, n: int) -> Tensor:
    """Bilinear, zero-padded samples of ``source`` (B x C x H x W) for point ``n`` of every group.

    Returns B x G x C/G x rows x sW.
    """
    b, c, h, w = source.shape
    g_grid = grid.view(b, groups, -1, *grid.shape[2:])[:, :, n]  # B x G x rows x sW x 2
    out = F.grid_sample(
        source.reshape(b * groups, c // groups, h, w),
        g_grid.reshape(b * groups, *g_grid.shape[2:]),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out.view(b, groups, c // groups, *out.shape[2:])


def deformable_similarity_upsample(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    offsets: Tensor,
    num_point: int,
    groups: int,
    scale: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Tensor:
    """SAPA-D: per group, softmax over ``num_point`` sampled keys, weighted sum of the sampled values.

    Args:
        query: B x G*d x sH x sW; key: B x G*d x H x W; value: B x C x H x W (C divisible by G).
        offsets: B x G*P*2 x sH x sW, channel (g*P + n)*2 + {0: x, 1: y}, in low-res pixels.

    Returns:
        B x C x sH x sW.
    """
    _check_pair(query, key, scale)
    b, d, h, w = key.shape
    if value.dim() != 4 or value.shape[0] != b or value.shape[2:] != (h, w):
        raise ValueError(f"value must be {b} x C x {h} x {w}, got {tuple(value.shape)}")
    c = value.shape[1]
    if d % groups or c % groups:
        raise ValueError(f"groups ({groups}) must divide the key channels ({d}) and the value channels ({c})")
    if offsets.shape != (b, groups * num_point * 2, h * scale, w * scale):
        raise ValueError(
            f"offsets must be {b} x {groups * num_point * 2} x {h * scale} x {w * scale}, got {tuple(offsets.shape)}"
        )
    ho, wo = h * scale, w * scale
    q5 = query.view(b, groups, d // groups, ho, wo)
    # Accumulator and one sampled value block, plus one sampled key block and the scores.
    bytes_per_row = b * wo * value.element_size() * (2 * c + d + 2 * groups * num_point)
    tile = rows_per_tile(ho, bytes_per_row, max_bytes)
    pieces = []
    for r0 in range(0, ho, tile):
        rows = range(r0, min(ho, r0 + tile))
        grid = _sampling_grid(offsets, rows, h, w, scale)
        qt = q5[:, :, :, rows.start : rows.stop]
        scores = torch.stack(
            [(qt * _sample_group_point(key, grid, groups, n)).sum(2) for n in range(num_point)], dim=2
        )  # B x G x P x rows x sW
        attn = F.softmax(scores, dim=2)
        acc = None
        for n in range(num_point):
            term = _sample_group_point(value, grid, groups, n) * attn[:, :, n : n + 1]
            acc = term if acc is None else acc + term
        assert acc is not None
        pieces.append(acc.reshape(b, c, len(rows), wo))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
