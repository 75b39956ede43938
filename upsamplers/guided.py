"""What the guided upsamplers (IndexNet, A2U, FADE, SAPA, FreqFusion) share, and how a neck uses them.

A guided upsampler is called as ``module(x, guide)``: ``x`` is the low-resolution map (B x C x H x W)
and ``guide`` the high-resolution feature of the finer level (B x C_guide x sH x sW). In an FPN the
guide is the raw lateral of the finer level (its 1x1 conv, before any top-down sum); see
:func:`fpn_merge` for the one-line top-down step that works for every upsampler in the registry.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Upsampler
from .ops.reassemble import DEFAULT_MAX_BYTES


def positive_int(label: str, value: object) -> int:
    """``value`` if it is a positive integer, else a ValueError that names ``label``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return value


def odd_kernel(label: str, value: object) -> int:
    """``value`` if it is an odd positive integer (a window centred on its pixel)."""
    if positive_int(label, value) % 2 == 0:
        raise ValueError(f"{label} must be an odd positive integer, got {value!r}")
    return value  # type: ignore[return-value]


def group_norm(label: str, groups: int, channels: int) -> nn.GroupNorm:
    """``nn.GroupNorm(groups, channels)`` with a clear error when the groups do not divide the channels."""
    if groups < 1 or channels % groups:
        raise ValueError(f"{label} uses GroupNorm({groups}) and needs channels divisible by {groups}, got {channels}")
    return nn.GroupNorm(groups, channels)


def xavier_convs(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases on every Conv2d below ``module`` (mmcv ``xavier_init``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GuidedUpsampler(Upsampler):
    """Base of the guided upsamplers: ``needs_guide``, the ``guide_channels`` option, scale limits.

    ``supported_scales`` (None = any) lists the scales a method's official design allows;
    ``fuses_guide`` is True for fusion modules whose output already contains the guide (FreqFusion):
    a neck must then *replace* the lateral with the output instead of adding the two.
    """

    needs_guide = True
    fuses_guide = False
    supported_scales: tuple[int, ...] | None = None

    def __init__(
        self, channels: int, scale: int, guide_channels: int | None, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__(channels, scale)
        name = type(self).__name__
        if self.supported_scales is not None and scale not in self.supported_scales:
            allowed = ", ".join(str(s) for s in self.supported_scales)
            raise ValueError(f"{name} supports only scale {allowed} (its design is fixed to it), got scale {scale}")
        self.guide_channels = channels if guide_channels is None else positive_int("guide_channels", guide_channels)
        # Budget for the working tensors of reassembly/similarity (see upsamplers.ops).
        self.max_bytes = positive_int("max_bytes", max_bytes)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, guide_channels={self.guide_channels}"

    def require_equal_channels(self, what: str) -> None:
        if self.guide_channels != self.channels:
            raise ValueError(
                f"{type(self).__name__} {what} needs guide_channels == channels, "
                f"got {self.guide_channels} and {self.channels}"
            )


def fpn_merge(upsampler: nn.Module, coarse: Tensor, lateral: Tensor) -> Tensor:
    """One FPN top-down step: the new finer lateral from the fused ``coarse`` map and the raw ``lateral``.

    * plain upsamplers: ``lateral + up(coarse)``;
    * guided upsamplers (``needs_guide``): ``lateral + up(coarse, guide=lateral)`` (FPN_UPSAMPLE);
    * fusion modules (``fuses_guide``, FreqFusion): ``up(coarse, guide=lateral)``, which already holds
      the (high-pass enhanced) lateral, so adding the lateral again would count it twice.
    """
    if getattr(upsampler, "fuses_guide", False):
        return upsampler(coarse, lateral)
    if getattr(upsampler, "needs_guide", False):
        return lateral + upsampler(coarse, lateral)
    return lateral + upsampler(coarse)
