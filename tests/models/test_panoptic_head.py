"""Panoptic FPN semantic head: mmdet 2.x keys load strictly, shapes, and mmdet's logit resizing."""

import pytest
import torch
from torch import nn

from lda_bench.models.panoptic_head import PanopticFPNSemanticHead, semantic_logits_to_image


def mmdet_semantic_head_keys():
    """Keys and shapes of mmdet 2.x PanopticFPNHead (in 256, inner 128, GN 32, 53 stuff + 1)."""
    keys = {}
    for level in range(4):
        for k in range(max(level, 1)):
            prefix = f"semantic_head.conv_upsample_layers.{level}.conv.{k}"
            keys[f"{prefix}.conv.weight"] = (128, 256 if k == 0 else 128, 3, 3)
            keys[f"{prefix}.gn.weight"] = (128,)
            keys[f"{prefix}.gn.bias"] = (128,)
    keys["semantic_head.conv_logits.weight"] = (54, 128, 1, 1)
    keys["semantic_head.conv_logits.bias"] = (54,)
    return keys


class Holder(nn.Module):  # the detector will hold the head under this attribute name
    def __init__(self):
        super().__init__()
        self.semantic_head = PanopticFPNSemanticHead()


def test_mmdet_keys_load_strictly():
    expected = mmdet_semantic_head_keys()
    model = Holder()
    state = {k: torch.randn(shape) for k, shape in expected.items()}
    model.load_state_dict(state, strict=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    # 1/1/2/3 convs over P2..P5: 7 convs; first conv of each level reads 256 channels.
    assert sum(p.numel() for p in model.parameters()) == (
        4 * 128 * 256 * 9 + 3 * 128 * 128 * 9 + 7 * 2 * 128 + 54 * 128 + 54
    )


def test_forward_reaches_stride_4():
    head = PanopticFPNSemanticHead().eval()
    feats = [torch.randn(1, 256, 32 // 2**i, 48 // 2**i) for i in range(5)]  # P2..P6; P6 unused
    with torch.no_grad():
        out = head(feats)
    assert out.shape == (1, 54, 32, 48)
    with pytest.raises(ValueError, match="at least 4"):
        head(feats[:3])


def test_logits_to_original_size():
    logits = torch.arange(4.0).view(1, 1, 2, 2).repeat(1, 54, 1, 1)
    # Network input 8 x 8 (padded), image 6 x 8 before padding, original 3 x 4.
    out = semantic_logits_to_image(logits, pad_shape=(8, 8), img_shape=(6, 8), ori_shape=(3, 4))
    assert out.shape == (1, 54, 3, 4)
    step1 = nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)[:, :, :6]
    assert torch.allclose(out, nn.functional.interpolate(step1, size=(3, 4), mode="bilinear", align_corners=False))
