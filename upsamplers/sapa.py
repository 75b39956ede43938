"""SAPA: similarity-aware point affiliation (Lu et al., NeurIPS 2022) and its deformable extension.

``sapa`` (SAPA-B, tiny-smart/sapa ``sapa_base.SAPA``): queries from the normalised high-res guide y,
keys from the normalised low-res x, values the *raw* x:

    q = Conv1x1(Norm(y))  (d x sH x sW)      k = Conv1x1(Norm(x))  (d x H x W)
    out_p = sum_j softmax_j(q_p . k_j) x_j   over the k_up x k_up window around p // s

no 1/sqrt(d) scaling; a key outside the image scores 0 and its value is 0 (the CUDA ops' semantics).
``norm='group'`` (GroupNorm(32), the detection/extension code, default), ``'layer'`` (channel
LayerNorm, the original poppinace/sapa ``SAPA.py``) or ``'none'``. Both norms have 2*C parameters, so
d=64 gives 33,920 parameters at C=256 with either; d=64 with ``norm='layer'`` is the original SAPA.py.

``sapa_d`` (SAPA-D, ``sapa_deform.SAPADeform``, detection config p9g4): per group, ``num_point`` keys
and values sampled bilinearly at p // s + learned offset (no base grid), softmax over the points.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .guided import GuidedUpsampler, group_norm, odd_kernel, positive_int
from .ops.reassemble import DEFAULT_MAX_BYTES
from .ops.similarity import deformable_similarity_upsample, similarity_upsample
from .registry import register

SAPA_REFERENCE = "Lu et al., SAPA, NeurIPS 2022; extension 'On Point Affiliation in Feature Upsampling'"
_NORMS = ("group", "layer", "none")


class ChannelLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a B x C x H x W map; keys ``weight``/``bias`` as ``nn.LayerNorm``
    so the original SAPA.py's ``norm_y``/``norm_x`` load unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm_kind(norm: object) -> str:
    # The official classes take a bool (GroupNorm or nothing); accept it as well as the names.
    if norm is True:
        return "group"
    if norm is False or norm is None:
        return "none"
    if norm not in _NORMS:
        raise ValueError(f"sapa norm must be one of {', '.join(repr(n) for n in _NORMS)} (or a bool), got {norm!r}")
    return str(norm)


def _make_norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "group":
        return group_norm("sapa norm='group'", 32, channels)
    if kind == "layer":
        return ChannelLayerNorm2d(channels)
    return None


class _SAPABase(GuidedUpsampler):
    """Norms, q/k projections and their initialisation, shared by SAPA-B and SAPA-D."""

    def _build_projections(self, norm: object, q_channels: int, qkv_bias: bool) -> None:
        self.norm_kind = _norm_kind(norm)
        norm_y = _make_norm(self.norm_kind, self.guide_channels)
        norm_x = _make_norm(self.norm_kind, self.channels)
        if norm_y is not None:
            self.norm_y = norm_y
            self.norm_x = norm_x
        self.q = nn.Conv2d(self.guide_channels, q_channels, 1, bias=qkv_bias)
        self.k = nn.Conv2d(self.channels, q_channels, 1, bias=qkv_bias)

    def reset_parameters(self) -> None:
        # Extension _init_weights: convs normal(std 0.02), zero biases; unit norms.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _normalised(self, x: Tensor, guide: Tensor) -> tuple[Tensor, Tensor]:
        if self.norm_kind == "none":
            return x, guide
        return self.norm_x(x), self.norm_y(guide)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        # The original SAPA.py uses nn.Linear for q and k: accept [d, C] weights as 1x1 convs.
        for name in ("q", "k"):
            key = f"{prefix}{name}.weight"
            weight = state_dict.get(key)
            if weight is not None and weight.dim() == 2:
                state_dict[key] = weight[:, :, None, None]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


@register("sapa", needs_guide=True, reference=SAPA_REFERENCE + " (SAPA-B)")
class SAPA(_SAPABase):
    """SAPA-B: softmax of query-key similarity over a k_up x k_up low-res window, raw x as values.

    Keys: ``norm_y.*``, ``norm_x.*`` (absent with ``norm='none'``), ``q.{weight,bias}`` [d, C_guide, 1, 1],
    ``k.{weight,bias}`` [d, C, 1, 1]; 2-D (``nn.Linear``) q/k weights of the original code also load.
    """

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        up_kernel_size: int = 5,
        embedding_dim: int = 32,
        qkv_bias: bool = True,
        norm: str | bool = "group",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(channels, scale, guide_channels, max_bytes)
        self.up_kernel_size = odd_kernel("sapa up_kernel_size", up_kernel_size)
        self.embedding_dim = positive_int("sapa embedding_dim", embedding_dim)
        self._build_projections(norm, embedding_dim, qkv_bias)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, up_kernel_size={self.up_kernel_size}, "
                f"embedding_dim={self.embedding_dim}, norm={self.norm_kind!r}")

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        assert guide is not None
        xn, yn = self._normalised(x, guide)
        return similarity_upsample(self.q(yn), self.k(xn), x, self.up_kernel_size, self.scale, self.max_bytes)


@register("sapa_d", needs_guide=True, reference=SAPA_REFERENCE + " (SAPA-D, deformable, p9g4)")
class SAPADeform(_SAPABase):
    """SAPA-D: per group, softmax over ``num_point`` deformably sampled keys, weighted sampled values.

    Offsets: 1x1 conv on (normalised) x to groups*num_point*2*s^2 channels, pixel-shuffled to the
    output size (``high_offset=True``) or to groups*num_point*2 and nearest-upsampled. Keys
    ``q.*``, ``k.*`` [groups*d, C, 1, 1], ``offset.*``, plus ``norm_y``/``norm_x`` when ``norm``.
    """

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        num_point: int = 9,
        groups: int = 4,
        embedding_dim: int = 32,
        qkv_bias: bool = True,
        high_offset: bool = True,
        norm: str | bool = "none",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(channels, scale, guide_channels, max_bytes)
        self.num_point = positive_int("sapa_d num_point", num_point)
        self.groups = positive_int("sapa_d groups", groups)
        self.embedding_dim = positive_int("sapa_d embedding_dim", embedding_dim)
        if channels % groups:
            raise ValueError(f"sapa_d groups ({groups}) must divide channels ({channels})")
        self.high_offset = high_offset
        self._build_projections(norm, groups * embedding_dim, qkv_bias)
        offset_channels = groups * num_point * 2 * (scale * scale if high_offset else 1)
        self.offset = nn.Conv2d(channels, offset_channels, 1, bias=qkv_bias)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_point={self.num_point}, groups={self.groups}, "
                f"embedding_dim={self.embedding_dim}, norm={self.norm_kind!r}")

    def offsets(self, xn: Tensor) -> Tensor:
        """Sampling offsets, B x groups*num_point*2 x sH x sW, (x, y) pairs in low-res pixels."""
        raw = self.offset(xn)
        if self.high_offset:
            return F.pixel_shuffle(raw, self.scale)
        return F.interpolate(raw, scale_factor=self.scale, mode="nearest")

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        assert guide is not None
        xn, yn = self._normalised(x, guide)
        return deformable_similarity_upsample(
            self.q(yn), self.k(xn), x, self.offsets(xn), self.num_point, self.groups, self.scale, self.max_bytes
        )
