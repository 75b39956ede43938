import pytest
import torch
from oracles import lda_aqu_oracle

import upsamplers

OFFICIAL_SHAPES = {
    "proj_q.weight": (64, 256, 1, 1),
    "proj_k.weight": (64, 256, 1, 1),
    "conv_offset.0.weight": (32, 1, 3, 3),
    "conv_offset.1.norm.weight": (32,),
    "conv_offset.1.norm.bias": (32,),
    "conv_offset.3.weight": (18, 32, 3, 3),
    "conv_offset.3.bias": (18,),
    "layer_norm.norm.weight": (256,),
    "layer_norm.norm.bias": (256,),
    "relative_position_bias_table": (1, 1, 1, 9, 64),
}


def randomise(module: torch.nn.Module, offset_scale: float = 3.0, std: float = 0.2) -> None:
    """Random weights everywhere, with a large last offset conv so tanh saturates (far samples)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(0, std)
            if name.startswith("conv_offset.3"):
                p.normal_(0, offset_scale)


def test_official_state_dict_layout_and_count():
    m = upsamplers.build("lda_aqu", channels=256)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == OFFICIAL_SHAPES
    assert sum(p.numel() for p in m.parameters()) == 39_410


def test_loads_official_checkpoint_with_base_offset_strictly():
    src = upsamplers.build("lda_aqu", channels=256)
    randomise(src)
    sd = dict(src.state_dict())
    sd["base_offset"] = torch.tensor([-1.0, -1, -1, 0, -1, 1, 0, -1, 0, 0, 0, 1, 1, -1, 1, 0, 1, 1]).view(1, 18, 1, 1)
    dst = upsamplers.build("lda_aqu", channels=256)
    dst.load_state_dict(sd, strict=True)
    x = torch.randn(1, 256, 3, 4)
    torch.testing.assert_close(dst(x), src(x))


def test_base_offset_matches_official_layout():
    m = upsamplers.build("lda_aqu", channels=16)
    expected = [-1.0, -1, -1, 0, -1, 1, 0, -1, 0, 0, 0, 1, 1, -1, 1, 0, 1, 1]  # (kh, kw, [dy, dx])
    assert m.base_offset.flatten().tolist() == expected


def test_official_initialisation():
    m = upsamplers.build("lda_aqu", channels=64)
    assert torch.count_nonzero(m.conv_offset[3].weight) == 0
    assert torch.count_nonzero(m.conv_offset[3].bias) == 0
    assert torch.all(m.layer_norm.norm.weight == 1) and torch.all(m.layer_norm.norm.bias == 0)
    assert torch.all(m.conv_offset[1].norm.weight == 1)
    # Xavier-uniform bound for a 1x1 conv 64 -> 16: sqrt(6 / (64 + 16)).
    bound = (6 / (64 + 16)) ** 0.5
    assert m.proj_q.weight.abs().max() <= bound and m.proj_q.weight.abs().max() > 0.8 * bound
    table = m.relative_position_bias_table
    assert 0.01 < table.std() < 0.03 and table.abs().max() <= 2.0


CASES = [
    dict(channels=16, shape=(2, 5, 7), options={}),
    dict(channels=16, shape=(1, 1, 1), options={}),
    dict(channels=16, shape=(1, 1, 6), options={}),
    dict(channels=16, shape=(1, 4, 1), options={}),
    dict(channels=32, shape=(2, 3, 5), options=dict(k_u=5, n_groups=4, num_heads=2, reduction_factor=8)),
    dict(channels=16, shape=(1, 4, 3), options=dict(rpb=False, range_factor=4.0)),
    dict(channels=24, shape=(1, 3, 4), options=dict(k_e=1, n_groups=3, reduction_factor=2, num_heads=3)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"C{c['channels']}-{c['shape']}-{c['options']}")
def test_matches_independent_oracle(case):
    b, h, w = case["shape"]
    m = upsamplers.build("lda_aqu", channels=case["channels"], **case["options"])
    randomise(m)
    x = torch.randn(b, case["channels"], h, w)
    out = m(x)
    opts = {k: v for k, v in case["options"].items() if k not in ("rpb", "k_e")}
    expected = lda_aqu_oracle(m.state_dict(), x, **opts)
    assert out.shape == (b, case["channels"], 2 * h, 2 * w)
    assert (out.double() - expected).abs().max() <= 1e-5
    # In float64 the module and the oracle agree to round-off: same semantics, not just close.
    assert (m.double()(x.double()) - expected).abs().max() <= 1e-10


def test_samples_far_out_of_bounds_are_zero_padded():
    m = upsamplers.build("lda_aqu", channels=8, reduction_factor=2)
    with torch.no_grad():
        m.conv_offset[3].bias.fill_(50.0)  # tanh -> 1: every point +11 output px down and right
    x = torch.randn(1, 8, 3, 3)
    out = m(x)
    expected = lda_aqu_oracle(m.state_dict(), x, reduction_factor=2)
    assert (out.double() - expected).abs().max() <= 1e-5
    # Pixels whose every sample lies beyond the image get zero output.
    assert out[0, :, 0, 0].abs().max() < 1e-6


def test_lsa_matches_oracle_without_deformation():
    m = upsamplers.build("lsa", channels=16)
    randomise(m)
    assert not any(k.startswith("conv_offset") for k in m.state_dict())
    assert sum(p.numel() for p in upsamplers.build("lsa", channels=256).parameters()) == 39_410 - 288 - 64 - 5_202
    x = torch.randn(2, 16, 4, 3)
    expected = lda_aqu_oracle(m.state_dict(), x, deform=False)
    assert (m(x).double() - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["lda_aqu", "lsa"])
def test_gradients_reach_every_parameter(name):
    m = upsamplers.build(name, channels=16)
    randomise(m, offset_scale=0.3)
    x = torch.randn(2, 16, 4, 5, requires_grad=True)
    m(x).square().sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_reference_tiles_rows_under_no_grad():
    from upsamplers.ops.sample_attention.reference import sample_attention_reference

    m = upsamplers.build("lda_aqu", channels=16, backend="reference")  # "auto" is cpp on CPU
    randomise(m)
    x = torch.randn(1, 16, 6, 5)
    full = m(x)
    captured = {}

    def spy(q, k, v, off, emb, g, nh):
        captured["args"] = (q, k, v, off, emb, g, nh)
        return full

    import upsamplers.ops as ops

    original = ops.BACKENDS["reference"]
    ops.BACKENDS["reference"] = spy
    try:
        m(x)
    finally:
        ops.BACKENDS["reference"] = original
    with torch.no_grad():
        tiled = sample_attention_reference(*captured["args"], max_bytes=1)  # one output row per tile
    torch.testing.assert_close(tiled, full.detach(), rtol=0, atol=1e-6)


def test_float64_and_batch_consistency():
    m = upsamplers.build("lda_aqu", channels=8, reduction_factor=2).double()
    randomise(m)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    batched = m(x)
    single = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single)
    assert batched.dtype == torch.float64


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="k_u must be odd"):
        upsamplers.build("lda_aqu", channels=16, k_u=4)
    with pytest.raises(ValueError, match="divisible by reduction_factor"):
        upsamplers.build("lda_aqu", channels=18, reduction_factor=4)
    with pytest.raises(ValueError, match="n_groups"):
        upsamplers.build("lda_aqu", channels=16, n_groups=3)
    with pytest.raises(ValueError, match="backend"):
        upsamplers.build("lda_aqu", channels=16, backend="cuda-magic")
