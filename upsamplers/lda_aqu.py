"""LDA-AQU: adaptive query-guided upsampling via local deformable attention (ACM MM 2024).

The forward pass is the official one (duzw9311/LDA-AQU, fpn_lau.py, class LDA_AQU):

1. channel LayerNorm of x; bias-free 1x1 projections to C/r channels give q and k;
2. q is upsampled bilinearly (align_corners=True) to the output size;
3. per offset group, a small network on the upsampled q (depthwise 3x3, LayerNorm, GELU,
   k_e x k_e conv) predicts 2*k_u^2 offsets; offsets = range_factor * tanh(.) + the k_u x k_u base
   grid, in output pixels;
4. k and the *raw* x are bilinearly sampled at the deformed points (zero padding, align_corners=True
   geometry), a learned per-point embedding is added to the keys, and one softmax over the k_u^2
   points (shared by the groups) weights the sum of the sampled values.

Step 4 is :func:`upsamplers.ops.sample_attention`, whose backend is selectable (``backend=``:
``auto``, ``reference``, ``cpp``, ``triton``; see :mod:`upsamplers.ops.sample_attention.backends`).
With a fused backend (``cpp`` on CPU, ``triton`` on CUDA) LDA-AQU runs as one operator,
``lda_aqu::module_forward`` (:mod:`upsamplers.ops.lda_aqu_module`): steps 1-3 fused around the
attention, forward and backward; ``reference`` keeps the layers as separate PyTorch modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .base import Upsampler
from .ops.lda_aqu_module import Config, Weights, module_forward
from .registry import register


@torch.compiler.assume_constant_result
def resolved_backend(backend: str, device_type: str) -> str:
    """The backend ``backend`` means for ``device_type`` tensors (a constant under torch.compile)."""
    return ops.resolve_backend(backend, device_type)

LDA_AQU_REFERENCE = "Du et al., LDA-AQU, ACM MM 2024 (arXiv 2411.19585)"


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a B x C x H x W map (the official ``LayerNormProxy``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def base_grid(k_u: int) -> Tensor:
    """The undeformed k_u x k_u window in output pixels, flattened as (kh, kw, [dy, dx])."""
    r = torch.arange(k_u, dtype=torch.float32) - (k_u - 1) / 2
    dy = r.view(k_u, 1).expand(k_u, k_u)
    dx = r.view(1, k_u).expand(k_u, k_u)
    return torch.stack((dy, dx), dim=-1).reshape(1, -1, 1, 1)


class _LocalAttentionUpsampler(Upsampler):
    """Shared body of LDA-AQU and its non-deformable ablation."""

    backends = ("reference", "cpp", "triton")

    def __init__(
        self,
        channels: int,
        scale: int,
        reduction_factor: int,
        k_u: int,
        n_groups: int,
        num_heads: int,
        rpb: bool,
        backend: str,
    ) -> None:
        super().__init__(channels, scale)
        for label, value in (("reduction_factor", reduction_factor), ("k_u", k_u), ("n_groups", n_groups),
                             ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if k_u % 2 == 0:
            raise ValueError(f"k_u must be odd (the window is centred on the pixel), got {k_u}")
        if channels % reduction_factor:
            raise ValueError(f"channels ({channels}) must be divisible by reduction_factor ({reduction_factor})")
        hidden = channels // reduction_factor
        if hidden % n_groups or channels % n_groups:
            raise ValueError(
                f"n_groups ({n_groups}) must divide both channels ({channels}) and channels/reduction ({hidden})"
            )
        if hidden % num_heads or channels % num_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must divide both channels ({channels}) and channels/reduction ({hidden})"
            )
        ops.check_backend_name(backend)  # fail early on a misspelt name; resolved (and built) at run time
        self.k_u = k_u
        self.n_groups = n_groups
        self.num_heads = num_heads
        self.hidden_dim = hidden
        self.group_channel = hidden // n_groups
        self.backend = backend
        self.layer_norm = ChannelLayerNorm(channels)
        self.proj_q = nn.Conv2d(channels, hidden, 1, bias=False)
        self.proj_k = nn.Conv2d(channels, hidden, 1, bias=False)
        if rpb:
            self.relative_position_bias_table = nn.Parameter(torch.zeros(1, num_heads, 1, k_u * k_u, hidden // num_heads))
        else:
            self.register_parameter("relative_position_bias_table", None)
        # Not persistent, as in the official code; old checkpoints that carry it still load (see
        # _load_from_state_dict).
        self.register_buffer("base_offset", base_grid(k_u), persistent=False)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, hidden={self.hidden_dim}, k_u={self.k_u}, n_groups={self.n_groups}, "
                f"num_heads={self.num_heads}, backend={self.backend!r}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        # mmcv 1.x saved non-persistent buffers too; the official checkpoints may carry base_offset.
        state_dict.pop(prefix + "base_offset", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _init_common(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.relative_position_bias_table is not None:
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def offsets(self, q: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        b, c, h, w = x.shape
        ho, wo = self.output_size(h, w)
        xn = self.layer_norm(x)
        q = F.interpolate(self.proj_q(xn), (ho, wo), mode="bilinear", align_corners=True)
        k = self.proj_k(xn)
        offsets = self.offsets(q)
        table = self.relative_position_bias_table
        embedding = None if table is None else table.view(self.num_heads, self.k_u * self.k_u, -1)
        return ops.sample_attention(q, k, x, offsets, embedding, self.n_groups, self.num_heads, self.backend)


@register("lda_aqu", reference=LDA_AQU_REFERENCE, backends=("reference", "cpp", "triton"))
class LDA_AQU(_LocalAttentionUpsampler):  # noqa: N801 - the official class name
    """Local deformable attention upsampler with the official parameter names and defaults."""

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        reduction_factor: int = 4,
        k_e: int = 3,
        k_u: int = 3,
        n_groups: int = 2,
        range_factor: float = 11,
        num_heads: int = 1,
        rpb: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__(channels, scale, reduction_factor, k_u, n_groups, num_heads, rpb, backend)
        if isinstance(k_e, bool) or not isinstance(k_e, int) or k_e < 1 or k_e % 2 == 0:
            raise ValueError(f"k_e must be an odd positive integer, got {k_e!r}")
        self.range_factor = float(range_factor)
        gc = self.group_channel
        self.conv_offset = nn.Sequential(
            nn.Conv2d(gc, gc, 3, 1, 1, groups=gc, bias=False),
            ChannelLayerNorm(gc),
            nn.GELU(),
            nn.Conv2d(gc, 2 * k_u * k_u, k_e, 1, k_e // 2),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official ``init_weights``: Xavier convs, unit LayerNorms, zero last offset conv."""
        self._init_common()
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def weights(self) -> Weights:
        """The parameters by role, as the fused operator takes them."""
        table = self.relative_position_bias_table
        conv = self.conv_offset
        return Weights(self.layer_norm.norm.weight, self.layer_norm.norm.bias, self.proj_q.weight, self.proj_k.weight,
                       conv[0].weight, conv[1].norm.weight, conv[1].norm.bias, conv[3].weight, conv[3].bias,
                       None if table is None else table.view(self.num_heads, self.k_u * self.k_u, -1))

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        if resolved_backend(self.backend, x.device.type) == "reference":
            return super().upsample(x, guide)
        config = Config(self.range_factor, self.n_groups, self.num_heads, self.scale, self.layer_norm.norm.eps)
        return module_forward(x, self.weights(), config, self.backend)

    def offsets(self, q: Tensor) -> Tensor:
        b, _, ho, wo = q.shape
        pred = self.conv_offset(q.reshape(b * self.n_groups, self.group_channel, ho, wo))
        offsets = pred.tanh() * self.range_factor + self.base_offset.to(q.dtype)
        return offsets.reshape(b, -1, ho, wo)


@register(
    "lsa",
    reference="local self-attention ablation of LDA-AQU (no deformation)",
    backends=("reference", "cpp", "triton"),
)
class LocalSelfAttention(_LocalAttentionUpsampler):
    """LDA-AQU without deformation: every point sits on the fixed k_u x k_u base grid."""

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        reduction_factor: int = 4,
        k_u: int = 3,
        n_groups: int = 2,
        num_heads: int = 1,
        rpb: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__(channels, scale, reduction_factor, k_u, n_groups, num_heads, rpb, backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._init_common()

    def offsets(self, q: Tensor) -> Tensor:
        b, _, ho, wo = q.shape
        base = self.base_offset.to(q.dtype).repeat(1, self.n_groups, 1, 1)
        return base.expand(b, -1, ho, wo)
