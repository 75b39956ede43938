"""The fused LDA-AQU module (``lda_aqu::module_forward``): the same function as the layers one by one,
forward and backward, for every option, shape, layout and dtype; its kernels; what it saves."""

import copy

import pytest
import torch

import upsamplers
import upsamplers.ops as ops
from upsamplers.ops.lda_aqu_module import Config, module_forward, module_reference
from upsamplers.ops.lda_aqu_module.flops import module_macs

FUSED = [b for b in ops.available_backends("cpu") if b != "reference"]  # cpp; triton when interpreted


def build(channels: int, dtype=torch.float64, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = upsamplers.build("lda_aqu", channels, backend="reference", **options).to(dtype)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.normal_(0, 0.3)
            if name.startswith("conv_offset.3"):
                p.normal_(0, 0.6)  # offsets spread over several pixels, some beyond the map
            if name.startswith("layer_norm") or name.startswith("conv_offset.1"):
                p.add_(1.0 if name.endswith("weight") else 0.0)
    return m


def config(m: torch.nn.Module) -> Config:
    return Config(m.range_factor, m.n_groups, m.num_heads, m.scale, m.layer_norm.norm.eps)


OPTIONS = [
    ({}, (2, 16, 3, 5)),
    (dict(k_u=5, n_groups=4, num_heads=2, reduction_factor=2, rpb=False), (1, 32, 4, 3)),
    (dict(k_e=1, range_factor=3.5), (1, 16, 5, 5)),
    (dict(k_e=5, n_groups=1), (1, 16, 2, 7)),
    (dict(scale=3), (1, 16, 3, 4)),
    ({}, (1, 16, 1, 1)),  # a 1-pixel map
    ({}, (3, 8, 1, 6)),  # one row, batch 3
    # 26 output columns: whole vectors and a partial last one with AVX2 (8 floats) and AVX-512 (16)
    (dict(k_e=5), (1, 16, 2, 13)),
]
IDS = ["defaults", "ku5-g4-h2-r2-norpb", "ke1-range3.5", "ke5-g1", "scale3", "one-pixel", "one-row-b3",
       "ke5-row-tail"]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("options,shape", OPTIONS, ids=IDS)
def test_forward_and_gradients_equal_the_layers_one_by_one(backend, options, shape):
    if backend == "triton" and shape[0] * shape[2] * shape[3] > 30:
        pytest.skip("the Triton interpreter is slow: tiny maps only")
    # The layers run in float64 (autograd through PyTorch): the truth. cpp computes float64 in float64,
    # exact up to round-off; Triton computes in float32, so it is held to float32 round-off of this
    # deliberately ill-conditioned function (large weights, offsets beyond the map).
    m = build(shape[1], dtype=torch.float64, **options)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = [p for _, p in m.named_parameters()]
    ref = m(x)
    g = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, [x, *params], g)
    dtype, tol, grad_tol = (torch.float64, 1e-10, 1e-9) if backend == "cpp" else (torch.float32, 3e-5, 3e-4)
    fused = copy.deepcopy(m).to(dtype)
    xf = x.detach().to(dtype).requires_grad_()
    out = module_forward(xf, fused.weights(), config(fused), backend)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max() <= tol
    got = torch.autograd.grad(out, [xf, *fused.parameters()], g.to(dtype))
    # What the layers themselves get wrong in the fused path's dtype: a gradient that cancels to ~0
    # in float64 (the depthwise weights of a one-row map) keeps float32 round-off of the size of its
    # terms, which depends on the CPU's vector math (numpy's exp/tanh under the interpreter).
    layers = copy.deepcopy(m).to(dtype)
    xl = x.detach().to(dtype).requires_grad_()
    roundoff = torch.autograd.grad(layers(xl), [xl, *layers.parameters()], g.to(dtype))
    for (name, _), a, b, r in zip([("input", None), *m.named_parameters()], got, expected, roundoff):
        layers_error = (r.double() - b).abs().max().item() if dtype != torch.float64 else 0.0
        bound = max(grad_tol * max(1.0, b.abs().max().item()), 4 * layers_error)
        assert (a - b).abs().max() <= bound, name


# cpp only: gradcheck runs hundreds of forwards, too many for the Triton interpreter (whose gradients
# are held to the float64 layers above).
@pytest.mark.parametrize("backend", ["cpp"])
def test_gradcheck_in_float64(backend):
    m = build(8)
    cfg = config(m)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(1, 8, 2, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, *params):
        w = m.weights().__class__(*params[:9], params[9].view(1, 9, -1))
        return module_forward(x, w, cfg, backend)

    w = m.weights()
    inputs = (x, w.ln_weight, w.ln_bias, w.q_weight, w.k_weight, w.dw_weight, w.offset_ln_weight, w.offset_ln_bias,
              w.offset_weight, w.offset_bias, m.relative_position_bias_table)
    assert len(inputs) == len(names) + 1
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def float64_copy(w):
    return type(w)(*[None if t is None else t.double() for t in vars(w).values()])


def test_float32_matches_the_reference_to_1e5_with_the_modules_own_initialisation():
    torch.manual_seed(1)
    m = upsamplers.build("lda_aqu", 256, backend="reference")
    x = torch.randn(1, 256, 13, 21)
    with torch.no_grad():
        ref = module_reference(x, m.weights(), config(m))
        out = module_forward(x, m.weights(), config(m), "cpp")
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("scale,shape,options", [
    (2, (1, 64, 3, 45), {}), (3, (2, 64, 2, 40), {}), (2, (1, 64, 4, 17), {}),
    (2, (1, 64, 3, 100), {}), (3, (1, 64, 2, 70), dict(k_e=5)), (2, (2, 64, 2, 200), dict(k_e=1)),
], ids=["s2-w45", "s3-w40-b2", "s2-w17", "s2-two-strips", "s3-ke5-two-strips", "s2-ke1-three-strips-b2"])
def test_wide_rows_match_the_reference(scale, shape, options):
    # Rows wide enough for the vector blocks of the query's horizontal interpolation (float32 with
    # AVX2/AVX-512: 8 or 16 output columns from two loads and two permutes) next to scalar columns at
    # the row's end; rows of more than 192 output columns, which the kernel cuts into strips with
    # halos (k_e = 1, 3, 5); offsets that move the points. float64 holds the function to 1e-10;
    # float32 must be no further from the float64 result than the reference is (at these sizes both
    # are up to 8e-5 from it).
    torch.manual_seed(3)
    m = upsamplers.build("lda_aqu", shape[1], backend="reference", scale=scale, **options)
    with torch.no_grad():
        m.conv_offset[-1].weight.normal_(0, 0.05)
    x = torch.randn(shape)
    w, cfg = m.weights(), config(m)
    with torch.no_grad():
        truth = module_reference(x.double(), float64_copy(w), cfg)
        assert (module_forward(x.double(), float64_copy(w), cfg, "cpp") - truth).abs().max() <= 1e-10
        ref_error = (module_reference(x, w, cfg).double() - truth).abs().max().item()
        fused_error = (module_forward(x, w, cfg, "cpp").double() - truth).abs().max().item()
    assert fused_error <= max(1e-5, 1.25 * ref_error)


@pytest.mark.parametrize("channels", [32, 128])
def test_float32_is_no_further_from_float64_truth_than_the_reference(channels):
    # With the large test weights the function is ill-conditioned: both float32 paths differ from the
    # float64 result by more than 1e-5 (the reference by 3e-5 at 32 channels), in different
    # summation orders. What the fused path must not do is add error of its own.
    m = build(channels, dtype=torch.float32, seed=1)
    x = torch.randn(2, channels, 6, 9)
    w, cfg = m.weights(), config(m)
    with torch.no_grad():
        truth = module_reference(x.double(), float64_copy(w), cfg)
        ref_error = (module_reference(x, w, cfg).double() - truth).abs().max().item()
        fused_error = (module_forward(x, w, cfg, "cpp").double() - truth).abs().max().item()
    assert fused_error <= max(1e-5, 1.25 * ref_error)


def test_float32_gradients_match_autograd_through_the_reference():
    m = build(32, dtype=torch.float32, seed=2)
    x = torch.randn(2, 32, 5, 7, requires_grad=True)
    params = [p for _, p in m.named_parameters()]
    g = torch.randn(2, 32, 10, 14)
    expected = torch.autograd.grad(m(x), [x, *params], g)
    got = torch.autograd.grad(module_forward(x, m.weights(), config(m), "cpp"), [x, *params], g)
    for a, b in zip(got, expected):
        assert ((a - b).abs().max() / b.abs().max()) <= 1e-4


@pytest.mark.parametrize("layout", ["channels-last", "strided", "half"])
def test_input_layouts_and_dtypes(layout):
    m = build(16, dtype=torch.float32)
    x = torch.randn(2, 16, 5, 6)
    if layout == "channels-last":
        given = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        given = torch.randn(2, 16, 5, 12)[..., ::2]
        x = given.contiguous()
    else:
        given = x.to(torch.bfloat16)
        x = given.float()
    with torch.no_grad():
        ref = module_reference(x, m.weights(), config(m))
        contiguous = module_forward(x, m.weights(), config(m), "cpp")
        out = module_forward(given, m.weights(), config(m), "cpp")
    assert out.dtype == given.dtype
    if layout == "half":
        assert (out.float() - ref).abs().max() <= 5e-2
    else:  # the layout changes nothing but the reading of x
        assert (out - contiguous).abs().max() <= 1e-6


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)], ids=["fp16", "bf16"])
def test_half_precision_accumulates_in_float32(backend, dtype, tol):
    # The module held in fp16/bf16 against the float32 layers with the same rounded weights and input:
    # only the output's rounding and float32 accumulation may differ.
    m = build(16, dtype=dtype)
    x = torch.randn(1, 16, 2, 3, dtype=dtype)
    exact = copy.deepcopy(m).float()
    with torch.no_grad():
        ref = module_reference(x.float(), exact.weights(), config(exact))
        out = module_forward(x, m.weights(), config(m), backend)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() <= tol
    xg = x.clone().requires_grad_()
    grads = torch.autograd.grad(module_forward(xg, m.weights(), config(m), backend), [xg, *m.parameters()],
                                torch.ones(1, 16, 4, 6, dtype=dtype))
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_the_module_uses_the_fused_operator_and_saves_no_full_resolution_tensor():
    m = build(16, dtype=torch.float32)
    m.backend = "cpp"
    x = torch.randn(1, 16, 12, 10, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = m(x)
    assert out.grad_fn.name().startswith("lda_aqu::module_forward") or "module_forward" in str(out.grad_fn)
    assert max(saved) == x.numel()  # the input and the weights: the backward recomputes the rest


def test_backward_is_deterministic():
    m = build(16, dtype=torch.float32)
    x = torch.randn(2, 16, 6, 7)
    g = torch.randn(2, 16, 12, 14)
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            xi = x.clone().requires_grad_()
            out = module_forward(xi, m.weights(), config(m), "cpp")
            runs.append(torch.autograd.grad(out, [xi, *m.parameters()], g))
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# float64 (vector width 8): 15 pixels (a vector and 7 lanes), 36 (a block of four vectors, 4 lanes);
# float32 (16 lanes): 117 pixels per image (a block, three vectors, 5 lanes), two images.
@pytest.mark.parametrize("options,shape,dtype", [({}, (2, 32, 5, 3), torch.float64),
                                                 (dict(k_e=5, num_heads=2), (1, 32, 9, 4), torch.float64),
                                                 ({}, (2, 32, 9, 13), torch.float32)],
                         ids=["defaults-b2", "ke5-h2", "float32-blocks"])
def test_project_and_offset_attention_kernels(options, shape, dtype):
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("cpp backend unavailable")
    from upsamplers.ops.lda_aqu_module import reference
    from upsamplers.ops.sample_attention import cpp as attention_cpp
    from upsamplers.ops.sample_attention.reference import sample_attention_reference

    lib = attention_cpp.library_ops()
    if dtype == torch.float64:
        m = build(shape[1], **options)
    else:  # the module's own initialisation: the large test weights make float32 ill-conditioned
        torch.manual_seed(0)
        m = upsamplers.build("lda_aqu", shape[1], backend="reference", **options)
    m.requires_grad_(False)
    w, cfg = m.weights(), config(m)
    x = torch.randn(shape, dtype=dtype)
    tol = dict(atol=1e-12) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-5)
    q0, k0 = reference.projections(x, w, cfg)
    wcat = torch.cat((w.q_weight.flatten(1), w.k_weight.flatten(1)))
    folded = wcat * w.ln_weight
    q0_out, k, v, mean, rstd = lib.project(x, folded, folded.sum(1), wcat @ w.ln_bias, cfg.eps, cfg.groups)
    assert torch.allclose(q0_out, q0, **tol)
    # Keys and values grouped channels-last, each group's last pixel (the zero pixel) zeros.
    b, c, hh, ww = shape
    for tensor, expected_map in ((k, k0), (v, x)):
        per_group = expected_map.shape[1] // cfg.groups
        grouped = expected_map.reshape(b, cfg.groups, per_group, hh * ww).permute(1, 0, 3, 2).reshape(cfg.groups, -1,
                                                                                                         per_group)
        assert tensor.shape == (cfg.groups, b * hh * ww + 1, per_group)
        assert torch.allclose(tensor[:, :-1], grouped, **tol) and not tensor[:, -1].any()
    var, mu = torch.var_mean(x, dim=1, unbiased=False)
    assert torch.allclose(mean, mu, **tol) and torch.allclose(rstd, (var + cfg.eps).rsqrt(), **tol)
    # Rows are computed in bands, one per thread: the band edges recompute the offset network's halo.
    h, wd = shape[2] * 2, shape[3] * 2
    q = reference.upsample_query(q0, 2)
    offsets = reference.offset_network(q, w, cfg)
    expected = sample_attention_reference(q, k0, x, offsets, w.embedding, cfg.groups, cfg.num_heads)
    out = lib.offset_attention(q0_out, k, v, h, wd, cfg.groups, cfg.num_heads, w.dw_weight, w.offset_ln_weight,
                               w.offset_ln_bias, w.offset_weight, w.offset_bias, cfg.range_factor,
                               reference.base_grid(cfg.points(w), dtype, x.device), cfg.eps,
                               attention_cpp.embedding_rows(w.embedding, dtype))
    assert torch.allclose(out, expected, **tol)


@pytest.mark.parametrize("elementwise", ["count", "ignore"])
@pytest.mark.parametrize("counter", ["fvcore", "dispatch"])
def test_flop_counts_of_the_fused_operator_equal_the_layers(counter, elementwise):
    from lda_bench.profiling.flops import count_macs

    x = torch.randn(1, 16, 3, 5)
    m = build(16, dtype=torch.float32).eval()
    layers = count_macs(m, (x,), counter, elementwise)
    m.backend = "cpp"
    fused = count_macs(m, (x,), counter, elementwise)
    assert fused.macs == layers.macs == module_macs((1, 16, 3, 5), (4, 16, 1, 1), (18, 2, 3, 3), 2, 2,
                                                    elementwise == "count")
    assert set(fused.by_operator) == {"module_forward"} and not fused.uncounted_ops
