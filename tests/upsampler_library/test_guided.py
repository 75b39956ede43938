import pytest
import torch
import torch.nn.functional as F
from oracles import (
    a2u_oracle,
    carafe_oracle,
    deform_sapa_oracle,
    fade_oracle,
    freqfusion_oracle,
    nearest_up,
    sapa_oracle,
    sapa_qk_oracle,
)

import upsamplers
from upsamplers.guided import fpn_merge
from upsamplers.ops.similarity import deformable_similarity_upsample, local_similarity, similarity_upsample

GUIDED = ["indexnet", "a2u", "fade", "fade_lite", "sapa", "sapa_d", "freqfusion"]
# Modules whose reassembly/similarity is tiled by max_bytes.
TILED = ["a2u", "fade", "fade_lite", "sapa", "sapa_d", "freqfusion"]
C = 32  # smallest width that suits GroupNorm(32) (A2U, SAPA-B) and FreqFusion's GroupNorm(C/8)


def n_params(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def perturbed(name, channels=C, **options):
    """A module whose zero/constant inits are broken, so every parameter matters."""
    m = upsamplers.build(name, channels=channels, **options)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def inputs(b, c, h, w, cg=None, scale=2):
    return torch.randn(b, c, h, w), torch.randn(b, cg or c, h * scale, w * scale)


@pytest.mark.parametrize(
    "name,options,expected",
    [
        ("indexnet", {}, 2_100_224),
        ("a2u", {}, 10_790),
        ("fade", {}, 47_257),
        ("fade", dict(gate=True), 47_514),
        ("fade_lite", {}, 13_075),
        ("fade_lite", dict(gate=True), 13_332),
        ("sapa", {}, 17_472),
        ("sapa", dict(embedding_dim=64), 33_920),
        ("sapa", dict(embedding_dim=64, norm="layer"), 33_920),
        ("sapa_d", {}, 139_808),
        ("freqfusion", {}, 104_690),
    ],
)
def test_parameter_counts_at_c256(name, options, expected):
    assert n_params(upsamplers.build(name, channels=256, **options)) == expected


@pytest.mark.parametrize("name", GUIDED)
def test_specs_declare_the_guide(name):
    spec = upsamplers.get_spec(name)
    assert spec.needs_guide and spec.reference
    assert spec.defaults["guide_channels"] is None
    m = upsamplers.build(name, channels=C)
    assert m.needs_guide and m.guide_channels == C
    assert getattr(m, "fuses_guide", False) == (name == "freqfusion")


@pytest.mark.parametrize("name", GUIDED)
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 5, 2), (3, 2, 7)])
def test_shapes_odd_sizes_batches_non_square(name, shape):
    b, h, w = shape
    m = upsamplers.build(name, channels=C)
    x, g = inputs(b, C, h, w)
    out = m(x, g)
    assert out.shape == (b, C, 2 * h, 2 * w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", GUIDED)
def test_single_pixel_input_in_eval_mode(name):
    # IndexNet's BatchNorm needs eval mode for one value; A2U's GroupNorm(32) two channels a group.
    m = upsamplers.build(name, channels=2 * C).eval()
    out = m(*inputs(1, 2 * C, 1, 1))
    assert out.shape == (1, 2 * C, 2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in GUIDED if n != "freqfusion"])
def test_guide_channels_option(name):
    m = upsamplers.build(name, channels=C, guide_channels=2 * C)
    assert m.guide_channels == 2 * C
    assert m(*inputs(2, C, 3, 4, cg=2 * C)).shape == (2, C, 6, 8)
    with pytest.raises(ValueError, match=f"guide of shape 2 x {2 * C} x 6 x 8"):
        m(*inputs(2, C, 3, 4))


@pytest.mark.parametrize("name", GUIDED)
def test_guide_is_used(name):
    m = perturbed(name)
    x, g = inputs(2, C, 3, 4)
    assert not torch.allclose(m(x, g), m(x, torch.randn_like(g)))


@pytest.mark.parametrize("name", GUIDED)
def test_missing_or_wrong_guide_gives_clear_error(name):
    m = upsamplers.build(name, channels=C)
    x = torch.randn(2, C, 3, 5)
    with pytest.raises(ValueError, match=rf"needs a high-resolution guide of shape 2 x {C} x 6 x 10"):
        m(x)
    with pytest.raises(ValueError, match=rf"expects a guide of shape 2 x {C} x 6 x 10, got \(2, {C}, 6, 9\)"):
        m(x, torch.randn(2, C, 6, 9))
    with pytest.raises(ValueError, match="4-D guide"):
        m(x, torch.randn(C, 6, 10))


@pytest.mark.parametrize("name", GUIDED)
def test_gradients_reach_every_parameter_and_both_inputs(name):
    m = perturbed(name)
    x, g = inputs(2, C, 3, 4)
    x.requires_grad_(True)
    g.requires_grad_(True)
    m(x, g).square().sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert x.grad.abs().sum() > 0 and g.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["indexnet", "a2u", "freqfusion"])
def test_scale_two_only_methods_reject_other_scales(name):
    with pytest.raises(ValueError, match="supports only scale 2"):
        upsamplers.build(name, channels=C, scale=3)


@pytest.mark.parametrize("name", ["fade", "fade_lite", "sapa", "sapa_d"])
def test_scale_three(name):
    m = upsamplers.build(name, channels=C, scale=3)
    assert m(*inputs(1, C, 2, 3, scale=3)).shape == (1, C, 6, 9)


@pytest.mark.parametrize("name", TILED)
def test_tiled_and_untiled_modules_agree(name):
    m = perturbed(name)
    x, g = inputs(2, C, 5, 3)
    untiled = m(x, g)
    m.max_bytes = 1  # one row per tile everywhere
    # Equal up to float32 round-off: a channel sum over fewer rows may be split differently by torch.
    torch.testing.assert_close(m(x, g), untiled, rtol=1e-5, atol=1e-5)


# --- similarity ops against loop oracles ----------------------------------------------------------


@pytest.mark.parametrize("k,scale,shape", [(5, 2, (2, 3, 4, 5)), (3, 2, (1, 2, 1, 3)), (3, 3, (1, 4, 3, 2))])
def test_local_similarity_matches_loop_oracle_including_borders(k, scale, shape):
    b, d, h, w = shape
    q = torch.randn(b, d, h * scale, w * scale)
    key = torch.randn(b, d, h, w)
    expected = sapa_qk_oracle(q, key, k, scale)
    assert (local_similarity(q, key, k, scale).double() - expected).abs().max() <= 1e-5
    tiled = local_similarity(q, key, k, scale, max_bytes=1)
    assert (tiled.double() - expected).abs().max() <= 1e-5


def test_similarity_upsample_matches_loop_oracle():
    q = torch.randn(2, 4, 8, 6)
    key = torch.randn(2, 4, 4, 3)
    v = torch.randn(2, 5, 4, 3)
    expected = sapa_oracle(q, key, v, 5, 2)
    assert (similarity_upsample(q, key, v, 5, 2).double() - expected).abs().max() <= 1e-5
    assert (similarity_upsample(q, key, v, 5, 2, max_bytes=1).double() - expected).abs().max() <= 1e-5


def test_sapa_out_of_image_keys_score_zero():
    # A 1x1 image: 24 of the 25 window keys lie outside, score 0 and carry value 0.
    q = torch.randn(1, 3, 2, 2)
    key = torch.randn(1, 3, 1, 1)
    v = torch.randn(1, 2, 1, 1)
    s = (q * key).sum(1)  # 1 x 2 x 2
    weight = s.exp() / (s.exp() + 24)
    torch.testing.assert_close(similarity_upsample(q, key, v, 5, 2), weight.unsqueeze(1) * v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale,groups,points", [(2, 2, 3), (3, 1, 2), (2, 4, 9)])
def test_deformable_similarity_matches_loop_oracle(scale, groups, points):
    b, h, w, dg, c = 2, 3, 4, 2, 2 * groups
    q = torch.randn(b, groups * dg, h * scale, w * scale)
    key = torch.randn(b, groups * dg, h, w)
    v = torch.randn(b, c, h, w)
    # Large offsets put many points partly or wholly outside the image.
    offsets = torch.randn(b, groups * points * 2, h * scale, w * scale) * 2.5
    expected = deform_sapa_oracle(q, key, v, offsets, points, groups, scale)
    out = deformable_similarity_upsample(q, key, v, offsets, points, groups, scale)
    assert (out.double() - expected).abs().max() <= 1e-5
    tiled = deformable_similarity_upsample(q, key, v, offsets, points, groups, scale, max_bytes=1)
    assert (tiled.double() - expected).abs().max() <= 1e-5


def test_deformable_zero_offsets_sample_the_parent_pixel():
    q = torch.randn(1, 4, 6, 4)
    key = torch.randn(1, 4, 3, 2)
    v = torch.randn(1, 4, 3, 2)
    out = deformable_similarity_upsample(q, key, v, torch.zeros(1, 2 * 5 * 2, 6, 4), 5, 2, 2)
    torch.testing.assert_close(out, nearest_up(v, 2), rtol=0, atol=1e-6)  # all points agree


# --- whole modules against oracles written from the official code ----------------------------------


def state(m):
    return {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_sapa_module_matches_oracle(norm):
    m = perturbed("sapa", norm=norm, embedding_dim=8)
    x, g = inputs(2, C, 3, 4)
    p = state(m)
    if norm == "group":
        xn, gn = F.group_norm(x, 32, p["norm_x.weight"], p["norm_x.bias"]), F.group_norm(
            g, 32, p["norm_y.weight"], p["norm_y.bias"])
    elif norm == "layer":
        def ln(t, w, b):
            return F.layer_norm(t.permute(0, 2, 3, 1), (C,), w, b).permute(0, 3, 1, 2)
        xn, gn = ln(x, p["norm_x.weight"], p["norm_x.bias"]), ln(g, p["norm_y.weight"], p["norm_y.bias"])
    else:
        xn, gn = x, g
    q = F.conv2d(gn, p["q.weight"], p["q.bias"])
    k = F.conv2d(xn, p["k.weight"], p["k.bias"])
    assert (m(x, g).double() - sapa_oracle(q, k, x, 5, 2)).abs().max() <= 1e-5


@pytest.mark.parametrize("high_offset", [True, False])
def test_sapa_d_module_matches_oracle(high_offset):
    m = perturbed("sapa_d", high_offset=high_offset, embedding_dim=4)
    with torch.no_grad():
        m.offset.weight.mul_(5)  # offsets of a few pixels
    x, g = inputs(2, C, 3, 4)
    p = state(m)
    raw = F.conv2d(x, p["offset.weight"], p["offset.bias"])
    offsets = F.pixel_shuffle(raw, 2) if high_offset else nearest_up(raw, 2)
    assert offsets.abs().max() > 1
    q = F.conv2d(g, p["q.weight"], p["q.bias"])
    k = F.conv2d(x, p["k.weight"], p["k.bias"])
    expected = deform_sapa_oracle(q, k, x, offsets, 9, 4, 2)
    assert (m(x, g).double() - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("name,gate", [("fade", False), ("fade", True), ("fade_lite", False), ("fade_lite", True)])
def test_fade_module_matches_oracle(name, gate):
    m = perturbed(name, gate=gate)
    x, g = inputs(2, C, 3, 4)
    expected = fade_oracle(state(m), g, x, 5, gate, lite=name == "fade_lite")
    assert (m(x, g).double() - expected).abs().max() <= 1e-5


def test_a2u_module_matches_oracle():
    m = perturbed("a2u")
    x, g = inputs(2, C, 3, 5)
    assert (m(x, g).double() - a2u_oracle(state(m), g, x)).abs().max() <= 1e-5


def test_freqfusion_module_matches_oracle():
    m = perturbed("freqfusion")
    x, g = inputs(2, C, 3, 4)
    assert (m(x, g).double() - freqfusion_oracle(state(m), g, x)).abs().max() <= 1e-5


def test_indexnet_is_index_times_nearest():
    m = perturbed("indexnet").eval()
    x, g = inputs(2, C, 3, 4)
    p = state(m)
    t = F.conv2d(g, p["indexnet.0.weight"], stride=2, padding=1)
    t = F.batch_norm(t, p["indexnet.1.running_mean"], p["indexnet.1.running_var"], p["indexnet.1.weight"],
                     p["indexnet.1.bias"])
    logits = F.conv2d(t.clamp(0, 6), p["indexnet.3.weight"])
    index = F.pixel_shuffle(logits.sigmoid(), 2)
    torch.testing.assert_close(m(x, g), index * nearest_up(x, 2))


def test_carafe_based_modules_reassemble_with_zero_padding():
    # FADE with a zero encoder has uniform kernels: the zero-padded 5x5 window mean, not renormalised.
    m = upsamplers.build("fade", channels=C)
    with torch.no_grad():
        m.ker_generator.content_encoder.weight.zero_()
    x, g = inputs(1, C, 4, 3)
    expected = carafe_oracle(x, torch.full((1, 25, 8, 6), 1 / 25), 5, 2)
    assert (m(x, g).double() - expected).abs().max() <= 1e-6


# --- checkpoint keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options,keys",
    [
        ("indexnet", {}, {"indexnet.0.weight", "indexnet.1.weight", "indexnet.1.bias", "indexnet.1.running_mean",
                          "indexnet.1.running_var", "indexnet.1.num_batches_tracked", "indexnet.3.weight"}),
        ("indexnet", dict(use_nonlinear=False), {"indexnet.weight"}),
        ("a2u", {}, {"kernel_gen.bnu.0.weight", "kernel_gen.bnu.0.bias", "kernel_gen.bnv.0.weight",
                     "kernel_gen.bnv.0.bias", "kernel_gen.bconv_UP.1.weight", "kernel_gen.bconv_UP.1.bias",
                     "kernel_gen.bconv_U.1.weight", "kernel_gen.bconv_U.1.bias", "kernel_gen.bconv_V.1.weight",
                     "kernel_gen.bconv_V.1.bias"}),
        ("fade", dict(gate=True), {"gate_generator.conv.weight", "gate_generator.conv.bias",
                                   "ker_generator.compressor_en.weight", "ker_generator.compressor_en.bias",
                                   "ker_generator.compressor_de.weight", "ker_generator.content_encoder.weight",
                                   "ker_generator.content_encoder.bias"}),
        ("sapa", {}, {"norm_y.weight", "norm_y.bias", "norm_x.weight", "norm_x.bias", "q.weight", "q.bias",
                      "k.weight", "k.bias"}),
        ("sapa_d", {}, {"q.weight", "q.bias", "k.weight", "k.bias", "offset.weight", "offset.bias"}),
        ("freqfusion", {}, {"hr_channel_compressor.weight", "hr_channel_compressor.bias",
                            "lr_channel_compressor.weight", "lr_channel_compressor.bias", "content_encoder.weight",
                            "content_encoder.bias", "content_encoder2.weight", "content_encoder2.bias",
                            "hamming_lowpass", "hamming_highpass", "dysampler.init_pos",
                            *(f"dysampler.{n}.{t}" for n in ("offset", "direct_scale", "hr_offset", "hr_direct_scale",
                                                             "norm_hr", "norm_lr") for t in ("weight", "bias"))}),
    ],
)
def test_official_state_dict_keys(name, options, keys):
    assert set(upsamplers.build(name, channels=C, **options).state_dict()) == keys


def test_sapa_loads_linear_q_k_weights_of_the_original_code():
    m = upsamplers.build("sapa", channels=C, embedding_dim=8, norm="layer")
    sd = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    sd["q.weight"] = sd["q.weight"][:, :, 0, 0].clone()
    sd["k.weight"] = sd["k.weight"][:, :, 0, 0].clone()
    m.load_state_dict(sd, strict=True)
    torch.testing.assert_close(m.q.weight[:, :, 0, 0], sd["q.weight"])


def test_freqfusion_hamming_buffers():
    m = upsamplers.build("freqfusion", channels=C)
    lo = m.hamming_lowpass[0, 0]
    assert lo.shape == (5, 5)
    torch.testing.assert_close(lo[2], torch.tensor([0.08, 0.54, 1.0, 0.54, 0.08]))
    torch.testing.assert_close(lo, lo.T)
    assert m.hamming_highpass.shape == (1, 1, 3, 3)


# --- FPN use ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nearest", "fade", "freqfusion"])
def test_fpn_merge(name):
    m = upsamplers.build(name, channels=C)
    coarse, lateral = inputs(1, C, 3, 4)
    merged = fpn_merge(m, coarse, lateral)
    if name == "freqfusion":
        expected = m(coarse, lateral)  # already hr_enhanced + lr_up: the lateral is not added again
        _, hr_out, lr_up = m.parts(coarse, lateral)
        torch.testing.assert_close(expected, hr_out + lr_up)
    elif name == "fade":
        expected = lateral + m(coarse, lateral)
    else:
        expected = lateral + m(coarse)
    torch.testing.assert_close(merged, expected)


# --- option errors ---------------------------------------------------------------------------------


def test_option_errors_are_clear():
    with pytest.raises(ValueError, match="norm must be one of"):
        upsamplers.build("sapa", channels=C, norm="batch")
    with pytest.raises(ValueError, match="GroupNorm\\(32\\)"):
        upsamplers.build("sapa", channels=16)
    with pytest.raises(ValueError, match="GroupNorm\\(32\\)"):
        upsamplers.build("a2u", channels=48)
    with pytest.raises(ValueError, match="groups \\(3\\) must divide channels"):
        upsamplers.build("sapa_d", channels=C, groups=3)
    with pytest.raises(ValueError, match="guide_channels == channels"):
        upsamplers.build("freqfusion", channels=C, guide_channels=64)
    with pytest.raises(ValueError, match="guide_channels == channels"):
        upsamplers.build("fade", channels=C, guide_channels=64, gate=True)
    with pytest.raises(ValueError, match="up_kernel_size must be an odd"):
        upsamplers.build("fade", channels=C, up_kernel_size=4)
    with pytest.raises(ValueError, match="guide_channels must be a positive integer"):
        upsamplers.build("sapa", channels=C, guide_channels=0)
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        upsamplers.build("fade", channels=C, max_bytes=0)
    with pytest.raises(ValueError, match="compressed channels"):
        upsamplers.build("freqfusion", channels=16)
    with pytest.raises(ValueError, match="unknown option 'gating'"):
        upsamplers.build("fade", channels=C, gating=True)
