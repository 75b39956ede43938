"""Detector assembly: mmdet key layout, FPN wiring of (guided) upsamplers, parameter counts, both forward paths."""

import pytest
import torch
from eval_helpers import detecting_model
from torch import nn

import upsamplers
from lda_bench.data import CocoDetection, preprocess
from lda_bench.data.synthetic import write_synthetic_coco
from lda_bench.data.transforms import collate
from lda_bench.models import ImageMeta, build_model, example_inputs, model_names
from lda_bench.models.fpn import UpsamplerFPN
from lda_bench.models.resnet import resnet50

SINGLE_INPUT = [s.name for s in upsamplers.available() if not s.needs_guide]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_model_names_and_unknown_name():
    assert model_names() == ["faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn", "panoptic_fpn_r50", "segformer_b1"]
    with pytest.raises(ValueError, match="did you mean 'faster_rcnn_r50_fpn'"):
        build_model("faster_rcnn_r50")


def test_mmdet_key_layout():
    keys = set(build_model("mask_rcnn_r50_fpn", "carafe").state_dict())
    for key in [
        "backbone.conv1.weight", "backbone.bn1.running_var", "backbone.layer1.0.downsample.1.num_batches_tracked",
        "backbone.layer4.2.conv3.weight", "neck.lateral_convs.3.conv.weight", "neck.lateral_convs.4.conv.bias",
        "neck.fpn_convs.4.conv.weight", "neck.upsample_modules.3.content_encoder.weight",
        "rpn_head.rpn_conv.weight", "rpn_head.rpn_cls.bias", "rpn_head.rpn_reg.weight",
        "roi_head.bbox_head.shared_fcs.0.weight", "roi_head.bbox_head.fc_cls.weight",
        "roi_head.bbox_head.fc_reg.bias", "roi_head.mask_head.convs.3.conv.weight",
        "roi_head.mask_head.upsample.weight", "roi_head.mask_head.conv_logits.bias",
    ]:
        assert key in keys, key
    assert not any(k.startswith("backbone.fc") or k.startswith("neck.upsample_modules.4") for k in keys)
    sd = build_model("faster_rcnn_r50_fpn").state_dict()
    assert sd["roi_head.bbox_head.fc_cls.weight"].shape == (81, 1024)  # background is row 80
    assert sd["roi_head.bbox_head.fc_reg.weight"].shape == (320, 1024)
    assert sd["roi_head.bbox_head.shared_fcs.0.weight"].shape == (1024, 256 * 7 * 7)
    assert sd["neck.lateral_convs.4.conv.weight"].shape == (256, 2048, 3, 3)
    assert not any(k.startswith("roi_head.mask_head") for k in sd)


def test_parameter_counts_per_upsampler(capsys):
    base = n_params(build_model("faster_rcnn_r50_fpn", "nearest"))
    # Plain mmdet FPN: torchvision's fasterrcnn_resnet50_fpn has 41,755,286 parameters with 91
    # classes and frozen (buffer) BN; minus the 91->80 class rows (55,350), plus BN affine (53,120).
    assert n_params(build_model("faster_rcnn_r50_fpn", "nearest", neck="fpn")) == 41_753_056
    # FPN_CARAFE adds the stride-2 3x3 conv on C5 and its output conv
    assert base == 41_753_056 + (2048 * 256 * 9 + 256) + (256 * 256 * 9 + 256)
    counts = {}
    for name in SINGLE_INPUT:
        counts[name] = n_params(build_model("faster_rcnn_r50_fpn", name))
        per_module = n_params(upsamplers.build(name, 256))
        assert counts[name] - base == 4 * per_module, name
    assert counts["lda_aqu"] - base == 4 * 39_410
    with capsys.disabled():
        print("\nFaster R-CNN R50 FPN_CARAFE parameters per upsampler:")
        for name, n in counts.items():
            print(f"  {name:15s} {n:>12,d}  (+{n - base:,d})")


def test_frozen_stages_leave_the_totals_mmcv_reports():
    """mmdet's R50 configs freeze the stem and layer1 (frozen_stages=1), and mmcv's complexity
    counter (mmdet's get_flops.py, the LDA-AQU paper's Fig. 1) counts only parameters that require
    gradients: 225,344 fewer than the checkpoint holds."""
    model = build_model("faster_rcnn_r50_fpn", "nearest")
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1.")) for name in frozen)
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_params(model) - trainable == 9_536 + 215_808  # stem (conv 9,408 + BN 128) + layer1
    assert trainable == 46_836_640  # mmcv prints 46.84 M
    with pytest.raises(ValueError, match="frozen_stages"):
        resnet50(frozen_stages=5)


class _Recorder(nn.Module):
    """A guided nearest upsampler that records what the neck feeds it."""

    needs_guide = True
    calls: list = []

    def __init__(self, channels, scale=2):
        super().__init__()
        self.channels = channels
        self.scale = scale

    def forward(self, x, guide=None):
        _Recorder.calls.append((tuple(x.shape[-2:]), None if guide is None else guide.clone()))
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")


@pytest.fixture
def recording_upsampler():
    upsamplers.register("test_recorder", needs_guide=True)(_Recorder)
    _Recorder.calls = []
    yield "test_recorder"
    upsamplers.unregister("test_recorder")


def test_fpn_carafe_top_down_order_and_guides(recording_upsampler):
    neck = UpsamplerFPN((4, 8, 16, 32), 4, recording_upsampler).eval()
    inputs = tuple(torch.randn(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate((4, 8, 16, 32)))
    outs = neck(inputs)
    assert [tuple(o.shape[-2:]) for o in outs] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    # coarse to fine: P6 -> P5 (module 3) first, P3 -> P2 (module 0) last
    assert [c[0] for c in _Recorder.calls] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    raw = [conv(x) for conv, x in zip(neck.lateral_convs, inputs)]  # guides: the raw 1x1 laterals L5..L2
    for (_, guide), lateral in zip(_Recorder.calls, reversed(raw)):
        torch.testing.assert_close(guide, lateral)


def test_fpn_pads_guide_when_p6_is_half_a_pixel_short(recording_upsampler):
    neck = UpsamplerFPN((4, 8, 16, 32), 4, recording_upsampler).eval()
    # C5 of 5 x 5 (an image padded to 32, not 64): P6 is 3 x 3, upsampled to 6 x 6 and cropped to 5 x 5
    inputs = tuple(torch.randn(1, c, 40 // 2**i, 40 // 2**i) for i, c in enumerate((4, 8, 16, 32)))
    outs = neck(inputs)
    assert tuple(outs[3].shape[-2:]) == (5, 5) and tuple(outs[4].shape[-2:]) == (3, 3)


def test_nearest_fpn_carafe_top_down_values():
    neck = UpsamplerFPN((1, 1, 1, 1), 1, "nearest").eval()
    with torch.no_grad():
        for conv in list(neck.lateral_convs) + list(neck.fpn_convs):
            conv.conv.weight.zero_()
            conv.conv.bias.zero_()
            conv.conv.weight[..., conv.conv.weight.shape[-1] // 2, conv.conv.weight.shape[-1] // 2] = 1.0
    inputs = tuple(torch.full((1, 1, 16 // 2**i, 16 // 2**i), float(10**i)) for i in range(4))
    outs = neck(inputs)
    # no activations: P5 = C5 + P6 (= C5 from the centre tap of the stride-2 conv) = 2000, P4 = 100 + 2000, ...
    assert outs[4][0, 0, 0, 0].item() == 1000.0
    assert outs[3][0, 0, 1, 1].item() == 2000.0
    assert outs[0][0, 0, 5, 5].item() == 2111.0


def test_plain_fpn_layout():
    neck = UpsamplerFPN(upsampler="dysample", neck_type="fpn")
    assert len(neck.upsample_modules) == 3 and len(neck.lateral_convs) == 4
    outs = neck(tuple(torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate((256, 512, 1024, 2048))))
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2]


def test_example_inputs_and_profiling_forward():
    x = example_inputs("faster_rcnn_r50_fpn")
    assert x.shape == (1, 3, 832, 1344)
    assert torch.equal(example_inputs("faster_rcnn_r50_fpn", 800, 1333), x)
    assert example_inputs("mask_rcnn_r50_fpn", 100, 150, batch=2, neck="fpn").shape == (2, 3, 128, 160)
    model = build_model("faster_rcnn_r50_fpn", "lda_aqu")
    outs = model(example_inputs("faster_rcnn_r50_fpn", 64, 64))
    assert all(isinstance(o, torch.Tensor) for o in outs)
    assert outs[-2].shape == (1000, 81) and outs[-1].shape == (1000, 320)
    assert outs[0].shape == (1, 3, 16, 16) and outs[5].shape == (1, 12, 16, 16)


def test_predict_outputs_and_batch_equivalence(tmp_path):
    write_synthetic_coco(tmp_path)
    data = CocoDetection(tmp_path)
    prepared = [preprocess(data.read_bgr(r), (160, 128), 64) for r in data.images[:2]]
    images = collate([p.image for p in prepared])
    metas = [ImageMeta(p.ori_shape, p.img_shape, p.pad_shape, p.scale_factor) for p in prepared]
    model = detecting_model(data, "mask_rcnn_r50_fpn")
    both = model.predict(images, metas)
    single = model.predict(images[1:], metas[1:])[0]
    det = both[1]
    assert det.boxes.shape[0] == det.scores.shape[0] == det.labels.shape[0] > 0
    assert det.masks.shape == (det.boxes.shape[0], 96, 128) and det.masks.dtype == torch.bool
    assert (det.boxes[:, 2] <= 128).all() and (det.boxes[:, 3] <= 96).all()  # original-image coordinates
    assert (det.scores > 0.05).all() and det.boxes.shape[0] <= 100
    assert (det.labels[1:] >= det.labels[:-1]).all()  # grouped by label like mmdet's bbox2result
    torch.testing.assert_close(det.boxes, single.boxes)
    assert torch.equal(det.labels, single.labels)
