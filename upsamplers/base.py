"""The common upsampler interface: ``forward(x, guide=None)`` with one-line input errors."""

from __future__ import annotations

from torch import Tensor, nn


class Upsampler(nn.Module):
    """Base class of the built-in upsamplers.

    Subclasses implement ``upsample(x, guide)``; ``forward`` validates the inputs first so that a
    wrong shape gives a ``ValueError`` that says what was expected instead of a deep traceback.
    """

    needs_guide: bool = False

    def __init__(self, channels: int, scale: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale
        # Guided subclasses overwrite this with their ``guide_channels`` option.
        self.guide_channels = channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale}"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height * self.scale, width * self.scale

    def check_input(self, x: Tensor, guide: Tensor | None = None) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} expects a tensor input, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name} expects a 4-D input B x C x H x W, got {x.dim()}-D shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.channels:
            raise ValueError(
                f"{name} was built for {self.channels} channels, got input with {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        if x.numel() == 0:
            raise ValueError(f"{name} got an empty input of shape {tuple(x.shape)}; every dimension must be >= 1")
        if not x.is_floating_point():
            raise ValueError(f"{name} expects a floating-point input, got {x.dtype}")
        if self.needs_guide:
            self.check_guide(x, guide)

    def check_guide(self, x: Tensor, guide: Tensor | None) -> None:
        name = type(self).__name__
        b, _, h, w = x.shape
        oh, ow = self.output_size(h, w)
        expected = f"{b} x {self.guide_channels} x {oh} x {ow}"
        if guide is None:
            raise ValueError(
                f"{name} needs a high-resolution guide of shape {expected} (B x C_guide x sH x sW); "
                "call it as module(x, guide)"
            )
        if not isinstance(guide, Tensor) or guide.dim() != 4:
            shape = tuple(guide.shape) if isinstance(guide, Tensor) else type(guide).__name__
            raise ValueError(f"{name} expects a 4-D guide of shape {expected}, got {shape}")
        if tuple(guide.shape) != (b, self.guide_channels, oh, ow):
            raise ValueError(f"{name} expects a guide of shape {expected}, got {tuple(guide.shape)}")

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        self.check_input(x, guide)
        return self.upsample(x, guide)

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
