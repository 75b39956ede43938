"""SegFormer-B1: mmseg checkpoint layout, parameter count, pluggable upsamplers, inference, evaluation."""

import pytest
import torch
import torch.nn.functional as F
from segformer_oracle import segformer_oracle
from synthetic_seg import make_ade20k
from torch import nn

import upsamplers
from lda_bench.data.ade20k import ADE20KDataset
from lda_bench.data.segmentation_transforms import SegTestTransform
from lda_bench.evaluation.sem_seg import evaluate_sem_seg
from lda_bench.models.seg_inference import segment, slide_inference, whole_inference
from lda_bench.models.segformer import build_segformer_b1, example_inputs

B1_PARAMS = 13_716_822


def mmseg_segformer_b1_keys(num_classes=150):
    """Key -> shape of mmseg's segformer_mit-b1 (MixVisionTransformer + SegformerHead), written from
    mmseg's module names: embed 64, heads 1/2/5/8, 2 blocks per stage, sr 8/4/2/1, mlp ratio 4."""
    keys = {}
    dims, srs, patches = (64, 128, 320, 512), (8, 4, 2, 1), (7, 3, 3, 3)
    in_ch = 3
    for s, (c, sr, k) in enumerate(zip(dims, srs, patches)):
        keys[f"backbone.layers.{s}.0.projection.weight"] = (c, in_ch, k, k)
        keys[f"backbone.layers.{s}.0.projection.bias"] = (c,)
        keys[f"backbone.layers.{s}.0.norm.weight"] = (c,)
        keys[f"backbone.layers.{s}.0.norm.bias"] = (c,)
        for j in range(2):
            p = f"backbone.layers.{s}.1.{j}"
            for norm in ("norm1", "norm2"):
                keys[f"{p}.{norm}.weight"] = (c,)
                keys[f"{p}.{norm}.bias"] = (c,)
            keys[f"{p}.attn.attn.in_proj_weight"] = (3 * c, c)
            keys[f"{p}.attn.attn.in_proj_bias"] = (3 * c,)
            keys[f"{p}.attn.attn.out_proj.weight"] = (c, c)
            keys[f"{p}.attn.attn.out_proj.bias"] = (c,)
            if sr > 1:
                keys[f"{p}.attn.sr.weight"] = (c, c, sr, sr)
                keys[f"{p}.attn.sr.bias"] = (c,)
                keys[f"{p}.attn.norm.weight"] = (c,)
                keys[f"{p}.attn.norm.bias"] = (c,)
            keys[f"{p}.ffn.layers.0.weight"] = (4 * c, c, 1, 1)
            keys[f"{p}.ffn.layers.0.bias"] = (4 * c,)
            keys[f"{p}.ffn.layers.1.weight"] = (4 * c, 1, 3, 3)
            keys[f"{p}.ffn.layers.1.bias"] = (4 * c,)
            keys[f"{p}.ffn.layers.4.weight"] = (c, 4 * c, 1, 1)
            keys[f"{p}.ffn.layers.4.bias"] = (c,)
        keys[f"backbone.layers.{s}.2.weight"] = (c,)
        keys[f"backbone.layers.{s}.2.bias"] = (c,)
        in_ch = c

    def conv_module(prefix, cin):
        keys[f"{prefix}.conv.weight"] = (256, cin, 1, 1)
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.bn.{name}"] = (256,)
        keys[f"{prefix}.bn.num_batches_tracked"] = ()

    for i, c in enumerate(dims):
        conv_module(f"decode_head.convs.{i}", c)
    conv_module("decode_head.fusion_conv", 4 * 256)
    keys["decode_head.conv_seg.weight"] = (num_classes, 256, 1, 1)
    keys["decode_head.conv_seg.bias"] = (num_classes,)
    return keys


def random_mmseg_state_dict(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("weight") and len(shape) == 1:  # LayerNorm / BatchNorm scales
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def b1_state():
    return random_mmseg_state_dict(mmseg_segformer_b1_keys())


def test_mmseg_checkpoint_loads_strictly(b1_state):
    model = build_segformer_b1()
    model.load_state_dict(b1_state, strict=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in b1_state.items()
    }


def test_forward_matches_the_longhand_mmseg_forward(b1_state):
    model = build_segformer_b1()
    model.load_state_dict(b1_state, strict=True)
    img = torch.randn(1, 3, 45, 70)  # odd sizes exercise the patch-embedding padding
    with torch.no_grad():
        ours = model.double()(img.double())
    assert torch.allclose(ours, segformer_oracle(b1_state, img), rtol=0, atol=1e-9)


def test_parameter_count():
    params = sum(p.numel() for p in build_segformer_b1().parameters())
    expected = sum(
        torch.Size(shape).numel()
        for key, shape in mmseg_segformer_b1_keys().items()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == expected == B1_PARAMS  # "13.7M" in the SegFormer paper and mmseg


@pytest.mark.parametrize("name, per_module", [("dysample", 16_448), ("carafe", 74_148), ("nearest", 0)])
def test_upsampler_replaces_the_three_resizes_with_six_modules(name, per_module):
    model = build_segformer_b1(name)
    extra = sum(p.numel() for p in model.parameters()) - B1_PARAMS
    assert extra == 6 * per_module  # CARAFE: 6 x 74,148 = 0.44M, FADE's "+0.44M" for SegFormer-B1
    assert len(model.decode_head.upsample_modules) == 6
    if per_module:
        assert {k.split(".")[2] for k in model.state_dict() if ".upsample_modules." in k} == {str(i) for i in range(6)}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 72))  # not a multiple of 32: x2 steps overshoot and are cropped
    assert out.shape == (1, 150, 40, 72)


def test_upsampler_options_pass_through():
    model = build_segformer_b1("lda_aqu", {"backend": "reference", "n_groups": 4})
    assert all(m.n_groups == 4 for m in model.decode_head.upsample_modules)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 150, 32, 32)


def test_bad_upsampler_arguments():
    with pytest.raises(ValueError, match="takes no upsampler options"):
        build_segformer_b1("bilinear", {"align_corners": True})
    with pytest.raises(ValueError, match="unknown upsampler"):
        build_segformer_b1("no_such_upsampler")


class RecordingGuided(nn.Module):
    """A guided test upsampler: nearest x2 of x, recording what it was given."""

    needs_guide = True
    calls: list = []

    def __init__(self, channels, scale=2):
        super().__init__()
        self.channels = channels

    def forward(self, x, guide=None):
        assert guide is not None and guide.shape[1] == self.channels
        RecordingGuided.calls.append((x, guide))
        return F.interpolate(x, scale_factor=2, mode="nearest")


@pytest.fixture
def guided_name():
    name = "test_recording_guided"
    upsamplers.register(name, needs_guide=True)(RecordingGuided)
    RecordingGuided.calls = []
    yield name
    upsamplers.unregister(name)


@pytest.mark.parametrize("size", [(64, 64), (40, 72)])
def test_guided_upsamplers_get_the_finer_embedding(guided_name, size):
    model = build_segformer_b1(guided_name)
    embedded = []
    for conv in model.decode_head.convs:
        conv.register_forward_hook(lambda module, args, out: embedded.append(out.clone()))
    with torch.no_grad():
        model(torch.randn(1, 3, *size))
    assert len(RecordingGuided.calls) == 6
    # module index -> level of the guide: 0 -> stride 16, 1 -> 8, 2 -> 4; 3 -> 8, 4 -> 4; 5 -> 4
    for (x, guide), level in zip(RecordingGuided.calls, (2, 1, 0, 1, 0, 0)):
        target = embedded[level]
        assert guide.shape[2:] == (2 * x.shape[2], 2 * x.shape[3])  # always an exact x2 pair
        h, w = target.shape[2:]
        assert torch.equal(guide[:, :, :h, :w], target)  # padded by replication where one short


def test_whole_and_slide_inference(b1_state):
    model = build_segformer_b1()
    model.load_state_dict(b1_state)
    img = torch.randn(1, 3, 32, 45)
    with torch.no_grad():
        whole = whole_inference(model, img, (40, 56))
        one_crop = slide_inference(model, img, (40, 56), crop_size=(32, 64), stride=(32, 64))
        slide = segment(model, img, (40, 56), mode="slide", crop_size=(32, 32), stride=(21, 21))
    assert whole.shape == slide.shape == (1, 150, 40, 56)
    assert torch.equal(whole, one_crop)  # a crop covering the whole image is whole inference
    assert not torch.equal(whole, slide)
    with pytest.raises(ValueError, match="unknown inference mode"):
        segment(model, img, (40, 56), mode="tiles")


def test_slide_averages_overlapping_crops():
    pointwise = nn.Conv2d(3, 5, 1)  # position-independent, so every crop agrees with the whole image
    img = torch.randn(1, 3, 23, 31)
    with torch.no_grad():
        whole = whole_inference(pointwise, img, (23, 31))
        slide = slide_inference(pointwise, img, (23, 31), crop_size=(10, 12), stride=(7, 5))
    assert torch.allclose(whole, slide, atol=1e-6)


def test_example_inputs():
    (x,) = example_inputs()
    assert x.shape == (1, 3, 512, 512)


@pytest.mark.parametrize("mode, aligned", [("whole", False), ("slide", True)])
def test_end_to_end_on_a_tiny_ade20k(tmp_path, b1_state, mode, aligned):
    data = ADE20KDataset(make_ade20k(tmp_path))
    model = build_segformer_b1()
    model.load_state_dict(b1_state, strict=True)
    transform = SegTestTransform(scale=(64, 32), size_divisor=32 if aligned else None)
    m = evaluate_sem_seg(model, data, transform=transform, mode=mode, crop_size=(32, 32), stride=(21, 21))
    assert m["num_images"] == 3
    assert 0.0 <= m["aAcc"] <= 100.0 and 0.0 <= m["mIoU"] <= 100.0
    assert len(m["per_class"]) == 150 and m["protocol"]["mode"] == mode
