"""MixVisionTransformer (MiT), SegFormer's encoder, with mmseg's parameter names.

Keys (stage ``s``, block ``j``) as in mmseg's ``mit.py``, so mmseg SegFormer checkpoints load
with ``strict=True``:

* ``layers.{s}.0.projection.*`` / ``layers.{s}.0.norm.*``: overlapping patch embedding (conv with
  kernel 7 stride 4 in stage 0, kernel 3 stride 2 after; padding kernel // 2), then LayerNorm;
* ``layers.{s}.1.{j}.norm1``, ``.attn.attn.{in_proj_weight, in_proj_bias, out_proj.*}``
  (``nn.MultiheadAttention``), ``.attn.sr`` / ``.attn.norm`` (spatial reduction, only where
  ``sr_ratio > 1``), ``.norm2``, ``.ffn.layers.{0,1,4}`` (1x1 conv, depthwise 3x3, GELU, 1x1 conv);
* ``layers.{s}.2.*``: the stage's final LayerNorm.

Every LayerNorm uses eps 1e-6 (mmseg's MiT default). Dropout and drop-path are training-only and
left out; the layers that hold them in mmseg keep their index so the key numbers match.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

LN_EPS = 1e-6


@dataclass(frozen=True)
class MiTConfig:
    embed_dims: int = 64
    num_layers: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    in_channels: int = 3

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dims * h for h in self.num_heads)


MIT_B1 = MiTConfig()  # mmseg configs/_base_/models/segformer_mit-b0.py with embed_dims=64


def _tokens_to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def _map_to_tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(_map_to_tokens(x)), hw


class EfficientMultiheadAttention(nn.Module):
    """Attention whose keys/values come from a ``sr_ratio``-times downsampled map."""

    def __init__(self, embed_dims: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, bias=True, batch_first=True)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS)

    def forward(self, x: Tensor, hw: tuple[int, int], identity: Tensor) -> Tensor:
        kv = x
        if self.sr_ratio > 1:
            kv = self.norm(_map_to_tokens(self.sr(_tokens_to_map(x, hw))))
        out = self.attn(query=x, key=kv, value=kv, need_weights=False)[0]
        return identity + out


class MixFFN(nn.Module):
    def __init__(self, embed_dims: int, hidden: int) -> None:
        super().__init__()
        # Indices 3 and 5 are mmseg's dropouts (identity at test time); keeping them keeps the key names.
        self.layers = nn.Sequential(
            nn.Conv2d(embed_dims, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Identity(),
            nn.Conv2d(hidden, embed_dims, 1),
            nn.Identity(),
        )

    def forward(self, x: Tensor, hw: tuple[int, int], identity: Tensor) -> Tensor:
        return identity + _map_to_tokens(self.layers(_tokens_to_map(x, hw)))


class TransformerEncoderLayer(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, hidden: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = EfficientMultiheadAttention(embed_dims, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.ffn = MixFFN(embed_dims, hidden)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.attn(self.norm1(x), hw, identity=x)
        return self.ffn(self.norm2(x), hw, identity=x)


class MixVisionTransformer(nn.Module):
    """Returns the four stage outputs (strides 4, 8, 16, 32) as B x C_s x H_s x W_s maps."""

    def __init__(self, config: MiTConfig = MIT_B1) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList()
        in_channels = config.in_channels
        for stage, dims in enumerate(config.stage_channels):
            blocks = nn.ModuleList(
                TransformerEncoderLayer(dims, config.num_heads[stage], config.mlp_ratio * dims, config.sr_ratios[stage])
                for _ in range(config.num_layers[stage])
            )
            patch_embed = PatchEmbed(in_channels, dims, config.patch_sizes[stage], config.strides[stage])
            self.layers.append(nn.ModuleList([patch_embed, blocks, nn.LayerNorm(dims, eps=LN_EPS)]))
            in_channels = dims

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for patch_embed, blocks, norm in self.layers:
            x, hw = patch_embed(x)
            for block in blocks:
                x = block(x, hw)
            x = _tokens_to_map(norm(x), hw)
            outs.append(x)
        return outs
