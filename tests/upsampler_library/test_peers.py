import pytest
import torch
import torch.nn.functional as F
from oracles import carafe_oracle

import upsamplers
from upsamplers.ops.reassemble import carafe_reassemble

SINGLE_INPUT = ["nearest", "bilinear", "deconv", "pixel_shuffle", "carafe", "dysample", "lda_aqu", "lsa"]


def n_params(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "name,options,expected",
    [
        ("nearest", {}, 0),
        ("bilinear", {}, 0),
        ("deconv", {}, 590_080),
        ("pixel_shuffle", {}, 2_360_320),
        ("carafe", {}, 74_148),
        ("dysample", dict(style="lp", dyscope=False), 8_224),
        ("dysample", dict(style="lp", dyscope=True), 16_448),
        ("dysample", dict(style="lp", dyscope=True, scope_bias=False), 16_416),
        ("dysample", dict(style="pl", dyscope=False), 520),
        ("dysample", dict(style="pl", dyscope=True, scope_bias=False), 1_032),
        ("dysample", dict(style="pl", dyscope=True), 1_040),
        ("lda_aqu", {}, 39_410),
    ],
)
def test_parameter_counts_at_c256(name, options, expected):
    assert n_params(upsamplers.build(name, channels=256, **options)) == expected


@pytest.mark.parametrize("name", SINGLE_INPUT)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (1, 7, 4)])
def test_shapes_odd_sizes_and_batches(name, shape):
    b, h, w = shape
    m = upsamplers.build(name, channels=16)
    out = m(torch.randn(b, 16, h, w))
    assert out.shape == (b, 16, 2 * h, 2 * w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SINGLE_INPUT)
def test_scale_three(name):
    m = upsamplers.build(name, channels=16, scale=3)
    assert m(torch.randn(1, 16, 2, 3)).shape == (1, 16, 6, 9)


@pytest.mark.parametrize("name", SINGLE_INPUT)
def test_guide_is_ignored_by_single_input_modules(name):
    m = upsamplers.build(name, channels=8)
    x = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(m(x, torch.randn(1, 8, 6, 6)), m(x))


@pytest.mark.parametrize("name", SINGLE_INPUT)
def test_bad_inputs_give_clear_errors(name):
    m = upsamplers.build(name, channels=8)
    with pytest.raises(ValueError, match="4-D input"):
        m(torch.randn(8, 3, 3))
    with pytest.raises(ValueError, match="built for 8 channels, got input with 5"):
        m(torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match="empty input"):
        m(torch.randn(1, 8, 0, 3))
    with pytest.raises(ValueError, match="floating-point"):
        m(torch.ones(1, 8, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("name", ["deconv", "pixel_shuffle", "carafe", "dysample", "lda_aqu", "lsa"])
def test_gradients_reach_every_parameter(name):
    m = upsamplers.build(name, channels=16)
    with torch.no_grad():  # break the zero/constant inits that would zero some gradients
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 16, 3, 4, requires_grad=True)
    m(x).square().sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
@pytest.mark.parametrize("scale", [2, 3])
def test_dysample_zero_offsets_equal_bilinear(style, dyscope, scale):
    m = upsamplers.build("dysample", channels=36, scale=scale, style=style, dyscope=dyscope)
    with torch.no_grad():
        m.offset.weight.zero_()
        m.offset.bias.zero_()
    x = torch.randn(2, 36, 5, 3)
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-5)


def test_dysample_offsets_move_samples():
    m = upsamplers.build("dysample", channels=16, dyscope=False)
    with torch.no_grad():
        m.offset.weight.zero_()
        m.offset.bias.zero_()
        m.offset.bias[: m.offset.bias.numel() // 2] = 4.0  # x offsets = +1 low-res pixel
    x = torch.arange(6.0).view(1, 1, 1, 6).repeat(1, 16, 4, 1)
    base = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    out = m(x)
    # A +1 pixel shift of a horizontal ramp adds 1 wherever no border clamping happens.
    torch.testing.assert_close(out[..., 2:8], base[..., 2:8] + 1)


def test_carafe_uniform_kernels_equal_zero_padded_window_mean():
    m = upsamplers.build("carafe", channels=8)
    with torch.no_grad():
        m.content_encoder.weight.zero_()
        m.content_encoder.bias.zero_()
    x = torch.randn(2, 8, 4, 5)
    mean = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=True)
    expected = F.interpolate(mean, scale_factor=2, mode="nearest")
    torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-6)


def test_carafe_kernels_are_softmax_normalised():
    m = upsamplers.build("carafe", channels=8, up_group=2)
    with torch.no_grad():
        m.content_encoder.weight.normal_()
    k = m.kernels(torch.randn(1, 8, 3, 3))
    assert k.shape == (1, 2 * 25, 6, 6)
    torch.testing.assert_close(k.view(1, 2, 25, 6, 6).sum(2), torch.ones(1, 2, 6, 6))


@pytest.mark.parametrize("k,scale,groups,shape", [(5, 2, 1, (2, 6, 4, 5)), (3, 2, 2, (1, 4, 1, 3)), (3, 3, 1, (1, 2, 3, 2))])
def test_reassemble_matches_loop_oracle_including_borders(k, scale, groups, shape):
    b, c, h, w = shape
    x = torch.randn(b, c, h, w)
    kernels = torch.randn(b, groups * k * k, h * scale, w * scale)
    out = carafe_reassemble(x, kernels, k, scale)
    assert (out.double() - carafe_oracle(x, kernels, k, scale)).abs().max() <= 1e-5


def test_reassemble_tiled_equals_untiled():
    x = torch.randn(1, 4, 7, 5)
    kernels = torch.randn(1, 25, 14, 10)
    untiled = carafe_reassemble(x, kernels, 5, 2)
    tiled = carafe_reassemble(x, kernels, 5, 2, max_bytes=1)  # one low-res row per tile
    torch.testing.assert_close(tiled, untiled, rtol=0, atol=0)


def test_reassemble_rejects_bad_kernels():
    with pytest.raises(ValueError, match="kernels must be"):
        carafe_reassemble(torch.randn(1, 4, 3, 3), torch.randn(1, 25, 5, 6), 5, 2)


def test_deconv_exact_size_and_checkpoint_keys():
    m = upsamplers.build("deconv", channels=8)
    assert set(m.state_dict()) == {"weight", "bias"} and m.weight.shape == (8, 8, 3, 3)
    ref = torch.nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 8, 3, 4)
    torch.testing.assert_close(m(x), ref(x))


def test_pixel_shuffle_keys_and_order():
    m = upsamplers.build("pixel_shuffle", channels=2)
    assert set(m.state_dict()) == {"upsample_conv.weight", "upsample_conv.bias"}
    with torch.no_grad():
        m.upsample_conv.weight.zero_()
        m.upsample_conv.bias.copy_(torch.arange(8.0))  # channel c*4 + i*2 + j
    out = m(torch.zeros(1, 2, 1, 1))
    assert out[0, 1].tolist() == [[4.0, 5.0], [6.0, 7.0]]


def test_module_specific_option_errors():
    with pytest.raises(ValueError, match="style"):
        upsamplers.build("dysample", channels=16, style="xx")
    with pytest.raises(ValueError, match="groups"):
        upsamplers.build("dysample", channels=6, groups=4)
    with pytest.raises(ValueError, match="up_kernel"):
        upsamplers.build("carafe", channels=8, up_kernel=4)
    with pytest.raises(ValueError, match="kernel_size"):
        upsamplers.build("deconv", channels=8, kernel_size=2)


def test_reassemble_gradients_and_op_checks():
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(2, 2 * 9, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: carafe_reassemble(a, b, 3, 2), (x, kernels))
    assert torch.autograd.gradcheck(lambda a, b: carafe_reassemble(a, b, 3, 2, max_bytes=1), (x, kernels))
    torch.library.opcheck(torch.ops.upsamplers.carafe_reassemble, (x.detach(), kernels.detach(), 3, 2, 2**29))
