"""The LDA-AQU module with every backend: same outputs, gradients and FLOP counts; torch.compile."""

import warnings

import pytest
import torch

import upsamplers
import upsamplers.ops as ops
from upsamplers.ops.lda_aqu_module.flops import module_conv_macs
from upsamplers.ops.sample_attention.flops import sample_attention_macs

BACKENDS = list(ops.available_backends("cpu"))  # reference, cpp if it built, triton when interpreted


def randomised(name: str, channels: int, backend: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    m = upsamplers.build(name, channels=channels, backend=backend, **options)
    with torch.no_grad():
        for pname, p in m.named_parameters():
            p.normal_(0, 0.2)
            if pname.startswith("conv_offset.3"):
                p.normal_(0, 1.0)  # offsets spread over several pixels, some beyond the map
    return m


def run(m: torch.nn.Module, x: torch.Tensor, call=None):
    x = x.clone().requires_grad_()
    out = (m if call is None else call)(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


CONFIGS = [
    ("lda_aqu", 16, (2, 3, 5), {}),
    ("lsa", 16, (1, 4, 3), {}),
    ("lda_aqu", 32, (1, 3, 4), dict(k_u=5, n_groups=4, num_heads=2, reduction_factor=2, rpb=False)),
]


@pytest.mark.parametrize("name,channels,shape,options", CONFIGS, ids=lambda v: str(v) if not isinstance(v, dict) else "")
def test_every_backend_gives_the_same_module(name, channels, shape, options):
    b, h, w = shape
    x = torch.randn(b, channels, h, w, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = run(randomised(name, channels, "reference", **options), x)
    for backend in BACKENDS:
        if backend == "reference" or (backend == "triton" and options):
            continue  # the interpreter is slow; the op-level tests cover triton with these options
        out, grads = run(randomised(name, channels, backend, **options), x)
        assert (out - ref_out).abs().max() <= 1e-5, backend
        for key, g in grads.items():
            scale = ref_grads[key].abs().max().clamp_min(1.0)
            assert (g - ref_grads[key]).abs().max() / scale <= 1e-4, (backend, key)


def test_registry_lists_the_backends():
    spec = {s.name: s for s in upsamplers.available()}
    assert spec["lda_aqu"].backends == ("reference", "cpp", "triton")
    assert spec["lsa"].backends == ("reference", "cpp", "triton")
    m = upsamplers.build("lda_aqu", channels=16, backend="cpp")  # building the module builds nothing yet
    assert "backend='cpp'" in repr(m)


def test_torch_compile_fullgraph_on_cpu():
    m = randomised("lda_aqu", 16, "auto")
    x = torch.randn(1, 16, 3, 4)
    eager_out, eager_grads = run(m, x)
    m.zero_grad()
    compiled = torch.compile(m, fullgraph=True, backend="inductor")
    out, grads = run(m, x, call=compiled)
    assert (out - eager_out).abs().max() <= 1e-5
    # Inductor fuses and reorders the surrounding layers (LayerNorm, convs): round-off differs.
    for key, g in grads.items():
        assert (g - eager_grads[key]).abs().max() / eager_grads[key].abs().max().clamp_min(1.0) <= 1e-4, key


def test_flop_counter_is_backend_independent():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 16, 3, 5)
    totals = {}
    for backend in BACKENDS:
        m = randomised("lda_aqu", 16, backend)
        with FlopCounterMode(display=False) as counter:
            m(x)
        counts = counter.get_flop_counts()["Global"]
        totals[backend] = counter.get_total_flops()
        # q: 1 x 4 x 6 x 10 (C/r = 4), value 1 x 16 x 3 x 5, offsets 1 x 36 x 6 x 10.
        attention = 2 * sample_attention_macs((1, 4, 6, 10), (1, 16, 3, 5), (1, 36, 6, 10), 2)
        if backend == "reference":  # the layers one by one
            assert counts[torch.ops.lda_aqu.sample_attention] == attention
        else:  # one fused operator, counted as the layers it replaces
            assert counts[torch.ops.lda_aqu.module_forward] == 2 * module_conv_macs((1, 16, 3, 5), (4, 16, 1, 1),
                                                                                  (18, 2, 3, 3), 2, 2)
    assert len(set(totals.values())) == 1, totals


def test_fvcore_counts_are_backend_independent():
    fvcore = pytest.importorskip("fvcore.nn")
    x = torch.randn(1, 16, 3, 5)
    totals = {}
    for backend in BACKENDS:
        m = randomised("lda_aqu", 16, backend).eval()
        analysis = fvcore.FlopCountAnalysis(m, x)
        # fvcore's own handles count LayerNorm and interpolation, not the elementwise ops.
        for name, handle in ops.fvcore_handles(elementwise=False).items():
            analysis.set_op_handle(name, handle)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the dynamic shapes in the module
            by_op = analysis.by_operator()
            totals[backend] = analysis.total()
        if backend == "reference":
            assert by_op["sample_attention"] == sample_attention_macs((1, 4, 6, 10), (1, 16, 3, 5),  # fvcore drops "lda_aqu::"
                                                                               (1, 36, 6, 10), 2)
        else:
            assert set(by_op) == {"module_forward"}
        assert not [op for op in analysis.unsupported_ops() if op.startswith("lda_aqu::")]
    assert len(set(totals.values())) == 1, totals


def test_macs_at_the_paper_setting():
    # C = 256, r = 4, k_u = 3: 9 * (64 + 256) = 2,880 attention MACs per output pixel, and the
    # bilinear sampling 4x that.
    macs = sample_attention_macs((1, 64, 1, 1), (1, 256, 1, 1), (1, 36, 1, 1), 2)
    assert macs == 2_880 * 5
