"""Panoptic FPN R50 and SegFormer-B1 in the model registry: mmdet key layout, parameter counts per
upsampler, default profiling inputs, plain-tensor forwards that fvcore can trace, panoptic inference."""

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from test_panoptic_head import mmdet_semantic_head_keys
from torch import nn

from lda_bench.models import build_model, example_inputs, get_model_spec, size_divisor
from lda_bench.models.nms import multiclass_nms

LDA_AQU_MODULE = 39_410  # one LDA-AQU module on 256 channels
PANOPTIC_NEAREST = 46_027_110


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mmdet_key_layout_is_mask_rcnn_plus_the_semantic_head():
    panoptic = {k: tuple(v.shape) for k, v in build_model("panoptic_fpn_r50").state_dict().items()}
    mask_rcnn = {k: tuple(v.shape) for k, v in build_model("mask_rcnn_r50_fpn", neck="fpn").state_dict().items()}
    assert panoptic == {**mask_rcnn, **mmdet_semantic_head_keys()}
    assert not any(k.startswith("neck.lateral_convs.4") for k in panoptic)  # plain FPN by default


def test_parameter_counts(capsys):
    nearest = n_params(build_model("panoptic_fpn_r50", "nearest"))
    # Mask R-CNN R50 plain FPN (41,753,056 + the mask head 2,643,280) + the semantic head 1,630,774
    assert nearest == 41_753_056 + 2_643_280 + 1_630_774 == PANOPTIC_NEAREST
    lau = n_params(build_model("panoptic_fpn_r50", "lda_aqu"))
    assert lau - nearest == 3 * LDA_AQU_MODULE  # plain FPN: three top-down upsamplers
    carafe_neck = n_params(build_model("panoptic_fpn_r50", "lda_aqu", neck="fpn_carafe"))
    assert carafe_neck - n_params(build_model("panoptic_fpn_r50", "nearest", neck="fpn_carafe")) == 4 * LDA_AQU_MODULE
    segformer = n_params(build_model("segformer_b1"))
    segformer_lau = n_params(build_model("segformer_b1", "lda_aqu"))
    assert segformer_lau - segformer == 6 * LDA_AQU_MODULE
    with capsys.disabled():
        print(f"\npanoptic_fpn_r50 nearest {nearest:,d}; lda_aqu {lau:,d} (+{lau - nearest:,d} = 3 x {LDA_AQU_MODULE:,d})"
              f"; lda_aqu with the FPN_CARAFE neck {carafe_neck:,d}"
              f"\nsegformer_b1 bilinear {segformer:,d}; lda_aqu {segformer_lau:,d} (+{segformer_lau - segformer:,d})")


def test_default_inputs_and_divisors():
    assert example_inputs("panoptic_fpn_r50").shape == (1, 3, 800, 1344)  # 800 x 1333 padded to 32
    assert example_inputs("panoptic_fpn_r50", neck="fpn_carafe").shape == (1, 3, 832, 1344)
    assert example_inputs("faster_rcnn_r50_fpn").shape == (1, 3, 832, 1344)
    assert example_inputs("segformer_b1").shape == (1, 3, 512, 512)
    assert example_inputs("segformer_b1", 500, 300, 2).shape == (2, 3, 500, 300)  # SegFormer does not pad
    assert torch.equal(example_inputs("panoptic_fpn_r50", 800, 1344), example_inputs("panoptic_fpn_r50"))
    assert (size_divisor("panoptic_fpn_r50"), size_divisor("segformer_b1")) == (32, None)
    assert get_model_spec("panoptic_fpn_r50").tasks == ("panoptic",)
    assert get_model_spec("segformer_b1").tasks == ("sem_seg",)


def test_build_errors():
    with pytest.raises(ValueError, match="has no FPN neck"):
        build_model("segformer_b1", neck="fpn")
    with pytest.raises(ValueError, match="num_stuff_classes is for panoptic"):
        build_model("faster_rcnn_r50_fpn", num_stuff_classes=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_model("panoptic_fpn_r50", num_classes=0)
    with pytest.raises(ValueError, match="height must be a positive integer"):
        example_inputs("segformer_b1", 0, 10)


@pytest.mark.parametrize("name,upsampler,size", [("panoptic_fpn_r50", "lda_aqu", (64, 96)),
                                                 ("segformer_b1", "dysample", (64, 64))])
def test_plain_tensor_forward_is_traceable(name, upsampler, size):
    model = build_model(name, upsampler=upsampler, upsampler_options={})
    x = example_inputs(name, *size)
    with torch.no_grad():
        outs = model(x)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert all(isinstance(o, torch.Tensor) for o in outs)
    if name == "panoptic_fpn_r50":
        assert outs[-1].shape == (1, 54, 16, 24)  # the semantic logits at stride 4
    else:
        assert outs[0].shape == (1, 150, 64, 64)
    flops = FlopCountAnalysis(model, (x,))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    assert flops.total() > 0


def test_predict_panoptic_gives_mmdet_values_at_the_original_size():
    from lda_bench.models import ImageMeta

    model = build_model("panoptic_fpn_r50", num_classes=3, num_stuff_classes=2)
    images = torch.randn(1, 3, 64, 96)
    meta = ImageMeta((40, 70), (50, 88), (64, 96), (1.25, 1.25, 1.25, 1.25))
    (pan,) = model.predict_panoptic(images, [meta])
    assert pan.shape == (40, 70) and pan.dtype == torch.int64
    things = pan >= 1000  # label + k * 1000 with a thing label 0..2
    assert (pan[things] % 1000 < 3).all()
    assert ((pan[~things] >= 3) & (pan[~things] <= 5)).all()  # stuff labels 3, 4 or VOID 5


def test_class_agnostic_nms():
    boxes = torch.tensor([[0, 0, 10, 10, 0, 0, 10, 10], [1, 1, 11, 11, 1, 1, 11, 11.0]])
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.02, 0.88, 0.1]])
    per_class = multiclass_nms(boxes, scores, 0.6, 0.5, 100)
    agnostic = multiclass_nms(boxes, scores, 0.6, 0.5, 100, class_agnostic=True)
    assert per_class[2].tolist() == [0, 1]  # different classes survive per-class NMS
    assert agnostic[2].tolist() == [0] and agnostic[1].tolist() == pytest.approx([0.9])
