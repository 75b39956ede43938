"""Reference (plain PyTorch) implementation of LDA-AQU's deformable sampling attention.

This is the oracle every fused backend is compared with. It follows the official code's
semantics exactly but samples K and V with one ``grid_sample`` per tensor on a
(points x rows, cols) grid instead of the official 3x-tiled image, so the sum over the points is a
plain reduction. Under ``torch.no_grad`` the output is produced in row tiles so that the sampled
k^2 x C x rows x W tensor stays under ``max_bytes``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reassemble import DEFAULT_MAX_BYTES, rows_per_tile


def _sample(src: Tensor, grid: Tensor, groups: int) -> Tensor:
    """Bilinearly sample ``src`` (B x C x H x W) per group at ``grid`` (B*G x P*R x W' x 2)."""
    b, c, h, w = src.shape
    out = F.grid_sample(
        src.reshape(b * groups, c // groups, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out  # B*G x C/G x P*R x W'


def sample_attention_reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    offsets: Tensor,
    embedding: Tensor | None,
    groups: int,
    num_heads: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Tensor:
    """Softmax-weighted sum of bilinearly sampled values; see :func:`upsamplers.ops.sample_attention`."""
    b, ch, ho, wo = query.shape
    _, c, h, w = value.shape
    points = offsets.shape[1] // (2 * groups)
    d = ch // num_heads
    scale = d**-0.5
    row_bytes = b * (c + ch) * points * wo * value.element_size() * 2
    tile = ho if torch.is_grad_enabled() else rows_per_tile(ho, row_bytes, max_bytes)
    off = offsets.view(b, groups, points, 2, ho, wo)
    cols = torch.arange(wo, device=query.device, dtype=query.dtype)
    pieces = []
    for r0 in range(0, ho, tile):
        r1 = min(ho, r0 + tile)
        rows = torch.arange(r0, r1, device=query.device, dtype=query.dtype)
        y = off[:, :, :, 0, r0:r1] + rows.view(-1, 1)
        x = off[:, :, :, 1, r0:r1] + cols
        # Same normalisation as the official code: 2*y/(Ho-1) - 1 with align_corners=True.
        grid = torch.stack((2 * x / (wo - 1) - 1, 2 * y / (ho - 1) - 1), dim=-1)
        grid = grid.reshape(b * groups, points * (r1 - r0), wo, 2)
        n_rows = r1 - r0
        k_s = _sample(key, grid, groups).view(b, ch, points, n_rows, wo)
        if embedding is not None:
            k_s = k_s + embedding.permute(0, 2, 1).reshape(1, ch, points, 1, 1)
        q = query[:, :, r0:r1].reshape(b, num_heads, d, 1, n_rows, wo)
        logits = (q * k_s.view(b, num_heads, d, points, n_rows, wo)).sum(2) * scale
        attn = logits.softmax(dim=2)  # B x heads x P x rows x W
        v_s = _sample(value, grid, groups).view(b, num_heads, c // num_heads, points, n_rows, wo)
        out = (v_s * attn.unsqueeze(2)).sum(3)
        pieces.append(out.reshape(b, c, n_rows, wo))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


@contextlib.contextmanager
def _autograd_recording() -> Iterator[None]:
    """Grad mode on, and the autograd dispatch keys usable even inside a custom-op kernel.

    ``torch.library`` runs a custom op's kernels with the autograd keys excluded from dispatch
    (they sit below autograd), so a kernel that differentiates through plain PyTorch, like the
    reference backward, has to lift that exclusion for its own scope. Outside a kernel this only
    enables grad mode.
    """
    keys = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (keys.AutogradFunctionality, keys.AutogradOther, keys.AutogradNestedTensor, keys.ADInplaceOrView):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def sample_attention_reference_backward(
    grad: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    offsets: Tensor,
    embedding: Tensor | None,
    groups: int,
    num_heads: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of :func:`sample_attention_reference` by autograd through it (no row tiling)."""
    leaves = [t.detach().requires_grad_() for t in (query, key, value, offsets)]
    emb = None if embedding is None else embedding.detach().requires_grad_()
    wrt = leaves + ([emb] if emb is not None else [])
    with _autograd_recording():
        out = sample_attention_reference(*leaves, emb, groups, num_heads)
        grads = torch.autograd.grad(out, wrt, grad, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g.contiguous() for t, g in zip(wrt, grads)]
    d_emb = grads[4] if emb is not None else None
    return grads[0], grads[1], grads[2], grads[3], d_emb
