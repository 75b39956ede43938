"""FLOP handles checked op by op against hand arithmetic, and both counters against each other."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import upsamplers
from lda_bench.profiling.flops import count_macs, einsum_macs

COUNTERS = ["fvcore", "dispatch"]


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def macs(fn, *inputs, counter="fvcore", elementwise="count"):
    return count_macs(Fn(fn) if not isinstance(fn, nn.Module) else fn, inputs, counter, elementwise)


@pytest.mark.parametrize("counter", COUNTERS)
def test_conv(counter):
    conv = nn.Conv2d(8, 16, 3, padding=1)
    result = macs(conv, torch.randn(2, 8, 5, 7), counter=counter)
    assert result.macs == 2 * 16 * 5 * 7 * 8 * 9  # B * Cout * H * W * Cin * k * k (bias not counted)
    assert result.by_operator == {"conv": result.macs}


@pytest.mark.parametrize("counter", COUNTERS)
def test_transposed_conv_counts_input_spatial(counter):
    deconv = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    result = macs(deconv, torch.randn(1, 8, 5, 6), counter=counter)
    assert result.macs == 1 * 8 * 4 * 9 * 5 * 6  # every input pixel scatters a k x k x Cout kernel


@pytest.mark.parametrize("counter", COUNTERS)
def test_bilinear_and_nearest_upsample(counter):
    x = torch.randn(1, 3, 4, 5)
    assert macs(lambda t: F.interpolate(t, scale_factor=2, mode="bilinear"), x, counter=counter).macs == 4 * 3 * 8 * 10
    assert macs(lambda t: F.interpolate(t, scale_factor=2, mode="bicubic"), x, counter=counter).macs == 16 * 3 * 8 * 10
    assert macs(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), x, counter=counter).macs == 0


@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize("mode,taps", [("bilinear", 4), ("nearest", 0), ("bicubic", 16)])
def test_grid_sample_reads_mode(counter, mode, taps):
    x = torch.randn(2, 3, 4, 5)
    grid = torch.rand(2, 6, 7, 2) * 2 - 1
    result = macs(lambda a, g: F.grid_sample(a, g, mode=mode, align_corners=False), x, grid, counter=counter)
    assert result.macs == taps * 2 * 3 * 6 * 7


@pytest.mark.parametrize("counter", COUNTERS)
def test_softmax_follows_elementwise_policy(counter):
    x = torch.randn(2, 9, 4, 4)
    assert macs(lambda t: t.softmax(1), x, counter=counter).macs == 2 * 9 * 16
    assert macs(lambda t: t.softmax(1), x, counter=counter, elementwise="ignore").macs == 0


@pytest.mark.parametrize("counter", COUNTERS)
def test_pixel_shuffle_and_unfold_are_free(counter):
    x = torch.randn(1, 8, 3, 3)
    result = macs(lambda t: F.pixel_shuffle(t, 2), x, counter=counter)
    assert result.macs == 0 and not result.uncounted_ops
    result = macs(lambda t: F.unfold(t, 3, padding=1), x, counter=counter)
    assert result.macs == 0 and not result.uncounted_ops


@pytest.mark.parametrize("counter", COUNTERS)
def test_matmul_and_einsum(counter):
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert macs(lambda x, y: torch.bmm(x, y), a, b, counter=counter).macs == 2 * 3 * 4 * 5
    result = macs(lambda x, y: torch.einsum("bij,bjk->bik", x, y), a, b, counter=counter)
    assert result.macs == 2 * 3 * 4 * 5


def test_einsum_with_three_operands():
    assert einsum_macs("ij,jk,kl->il", [[2, 3], [3, 4], [4, 5]]) == 2 * 3 * 4 * 5
    assert einsum_macs("...ij,jk->...ik", [[7, 2, 3], [3, 4]]) == 7 * 2 * 3 * 4


def test_uncounted_ops_are_listed():
    result = macs(lambda t: torch.cumsum(t, 1), torch.randn(2, 3, 4, 4))
    assert "aten::cumsum" in result.uncounted_ops


@pytest.mark.parametrize("name", upsamplers.names())
def test_counters_agree_on_every_builtin(name):
    m = upsamplers.build(name, channels=64).eval()
    inputs = (torch.randn(1, 64, 5, 6),)
    if upsamplers.get_spec(name).needs_guide:
        inputs += (torch.randn(1, 64, 10, 12),)
    a = count_macs(m, inputs, "fvcore")
    b = count_macs(m, inputs, "dispatch")
    assert a.macs == b.macs
    assert not a.uncounted_ops and not b.uncounted_ops


def test_lda_aqu_conv_macs_match_the_analytic_count():
    """docs/cost-of-lda-aqu-and-carafe.md at C=256, r=4: q/k projections 32,768 MACs per low-res pixel,
    offset network 10,944 MACs per high-res pixel."""
    from upsamplers.ops.lda_aqu_module.flops import module_conv_macs
    from upsamplers.ops.sample_attention.flops import sample_attention_macs

    h, w = 13, 21
    attention = sample_attention_macs((1, 64, 2 * h, 2 * w), (1, 256, h, w), (1, 36, 2 * h, 2 * w), 2)
    conv = module_conv_macs((1, 256, h, w), (64, 256, 1, 1), (18, 32, 3, 3), groups=2, scale=2) - attention
    assert conv == 32_768 * h * w + 10_944 * (2 * h) * (2 * w)
    # The module runs as one fused operator; its count holds the convolutions, the query's
    # upsampling (4 taps per element) and the attention (test_lda_aqu_module checks the sum).
    m = upsamplers.build("lda_aqu", channels=256).eval()
    result = count_macs(m, (torch.randn(1, 256, h, w),))
    assert set(result.by_operator) == {"module_forward"}
    assert result.by_operator["module_forward"] > conv + 4 * 64 * (2 * h) * (2 * w)


def test_carafe_macs_match_the_analytic_count():
    """docs/cost-of-lda-aqu-and-carafe.md at C=256: kernel generation 73,984 MACs and reassembly
    25,600 MACs per low-res pixel; the reassembly op is counted whatever the elementwise policy."""
    h, w = 13, 21
    m = upsamplers.build("carafe", channels=256).eval()
    for counter in COUNTERS:
        result = count_macs(m, (torch.randn(1, 256, h, w),), counter, elementwise="ignore")
        assert result.by_operator == {"conv": 73_984 * h * w, "carafe_reassemble": 25_600 * h * w}


@pytest.mark.parametrize("counter", COUNTERS)
def test_attention(counter):
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    sdpa = lambda a, b, c: F.scaled_dot_product_attention(a, b, c)  # noqa: E731
    # q.k^T and weights.v per batch and head, plus the softmax over the 6 x 5 weights
    assert macs(sdpa, q, k, v, counter=counter).macs == 2 * 4 * 6 * 5 * (8 + 8 + 1)
    assert macs(sdpa, q, k, v, counter=counter, elementwise="ignore").macs == 2 * 4 * 6 * 5 * (8 + 8)


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x, kv):
        return self.mha(x, kv, kv, need_weights=False)[0]


def test_multi_head_attention_fast_path_agrees_with_the_trace():
    """In eval + no_grad nn.MultiheadAttention takes a fused path the JIT trace never sees."""
    module = CrossAttention().eval()
    x, kv = torch.randn(1, 10, 16), torch.randn(1, 4, 16)
    fv = count_macs(module, (x, kv), "fvcore", elementwise="ignore")
    dp = count_macs(module, (x, kv), "dispatch", elementwise="ignore")
    expected = 10 * 16 * 16 + 2 * 4 * 16 * 16 + 2 * 10 * 4 * 16 + 10 * 16 * 16  # q, k+v, attention, out
    assert fv.macs == dp.macs == expected
    assert count_macs(module, (x, kv), "fvcore").macs == count_macs(module, (x, kv), "dispatch").macs
