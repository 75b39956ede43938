"""Every backend of ``lda_aqu::sample_attention`` against the reference, plus the op machinery.

Triton runs in the interpreter here (conftest sets TRITON_INTERPRET=1), on tiny maps.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import upsamplers.ops as ops
from upsamplers.ops.sample_attention import backends, cpp
from upsamplers.ops.sample_attention.reference import sample_attention_reference, sample_attention_reference_backward

FAST = [b for b in ("cpp",) if b in ops.available_backends("cpu")]


def triton_device() -> str:
    """CPU tensors under the interpreter; CUDA tensors with LDA_BENCH_TEST_TRITON_GPU=1 on a GPU."""
    if "triton" in ops.available_backends("cpu"):
        return "cpu"
    if torch.cuda.is_available() and "triton" in ops.available_backends("cuda"):
        return "cuda"
    pytest.skip("triton is not runnable here")


def make_inputs(b=2, c=16, ch=8, h=5, w=7, ho=None, wo=None, groups=2, heads=1, points=9, spread=3.0,
                embedding=True, offsets="random", dtype=torch.float32, seed=0, device="cpu"):
    """Random op inputs; ``offsets`` = random | far | integer (positions on exact low-res pixels)."""
    gen = torch.Generator().manual_seed(seed)
    ho = 2 * h if ho is None else ho
    wo = 2 * w if wo is None else wo

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = rnd(b, ch, ho, wo), rnd(b, ch, h, w), rnd(b, c, h, w)
    shape = (b, groups, points, 2, ho, wo)
    if offsets == "random":
        off = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    elif offsets == "far":
        # Most samples far outside the map, some enormous, a few inside.
        off = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * 40
        off[:, :, 0] = 1e6
        off[:, :, 1] = -1e7
    elif offsets == "integer":
        # y * (H-1)/(Ho-1) is an integer or a half for even/odd output coordinates when
        # (H-1)/(Ho-1) = 1/2: the one-sided bilinear gradients must match the reference exactly.
        assert (h - 1) * 2 == ho - 1 and (w - 1) * 2 == wo - 1
        target_y = torch.randint(-2, ho + 2, shape[:3] + (ho, wo), generator=gen).double()
        target_x = torch.randint(-2, wo + 2, shape[:3] + (ho, wo), generator=gen).double()
        rows = torch.arange(ho, dtype=torch.float64).view(-1, 1)
        cols = torch.arange(wo, dtype=torch.float64)
        off = torch.stack((target_y - rows, target_x - cols), dim=3)
    else:
        raise ValueError(offsets)
    off = off.reshape(b, groups * points * 2, ho, wo)
    emb = 0.5 * rnd(heads, points, ch // heads) if embedding else None
    cast = [t.to(device, dtype) if t is not None else None for t in (q, k, v, off, emb)]
    return cast, dict(groups=groups, num_heads=heads)


CASES = {
    "random-batch2": dict(),
    "far-out-of-bounds": dict(offsets="far"),
    "integer-positions": dict(h=5, w=4, ho=9, wo=7, offsets="integer"),
    "one-pixel": dict(h=1, w=1),
    "one-row": dict(h=1, w=6),
    "one-column": dict(h=4, w=1),
    "non-square": dict(b=1, h=3, w=8, spread=6.0),
    "ku5-groups4-heads2": dict(c=32, ch=16, groups=4, heads=2, points=25),
    "heads3-groups3-no-embedding": dict(b=1, c=24, ch=12, h=3, w=4, groups=3, heads=3, embedding=False),
    "no-embedding": dict(b=1, embedding=False),
    # Paper-sized channels: 128 value channels per group (the widest register-blocked loops) and
    # maps wide enough for the in-register transposes plus ragged edges.
    "paper-channels": dict(b=2, c=256, ch=64, h=9, w=19, spread=4.0),
    # Widths that take the other specialised loops of the cpp forward: keys of 3 vectors per
    # segment (float, AVX-512) with 2 heads; values split into 4-vector, 1-vector and ragged slices,
    # keys with a scalar remainder; a row of 42 pixels (one full chunk of 32 and a partial one).
    "three-vector-keys-two-heads": dict(b=1, c=128, ch=96, h=4, w=21, heads=2, spread=4.0),
    "ragged-channel-widths": dict(b=1, c=180, ch=80, h=5, w=21, spread=4.0),
    # 64 key channels per group: the widest keys kept in registers by the cpp float forward.
    "four-vector-keys": dict(b=1, c=64, ch=128, h=3, w=17, spread=3.0),
    # 16 key channels per group (one vector) and odd rows of 35 pixels: the cpp float forward's
    # logits two pixels at a time, then the odd pixel alone (a full chunk of 32, then 3).
    "one-vector-keys-odd-rows": dict(b=1, c=64, ch=32, h=4, w=9, ho=7, wo=35, spread=3.0),
    # Several heads whose logits share one vector in the cpp float softmax (2 heads x 4 points).
    "two-heads-four-points": dict(b=1, c=32, ch=16, heads=2, points=4, spread=2.0),
}
# The interpreter's cost grows with program instances x ops (a program is one image here, and
# k_u = 5 with 4 groups unrolls 100 points): a subset for triton, one image for the biggest.
TRITON_CASES = ["random-batch2", "far-out-of-bounds", "integer-positions", "one-pixel", "one-column",
                "ku5-groups4-heads2", "heads3-groups3-no-embedding"]
TRITON_OVERRIDES = {"ku5-groups4-heads2": dict(b=1)}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    # Relative to the largest expected magnitude, floored at 1: some cases (a one-pixel map, where
    # all points sample the same key) have exactly-zero true gradients that the reference
    # reproduces only up to round-off.
    return ((actual.double() - expected.double()).abs().max() / expected.abs().max().clamp_min(1.0)).item()


def check_backend(backend: str, case: str, dtype=torch.float32, **overrides) -> None:
    (q, k, v, off, emb), cfg = make_inputs(dtype=dtype, **{**CASES[case], **overrides})
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    out = ops.sample_attention(q, k, v, off, emb, backend=backend, **cfg)
    ref = sample_attention_reference(q, k, v, off, emb, **cfg)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert out.is_contiguous(memory_format=torch.channels_last)  # the op's layout, whatever the backend
    assert (out - ref).abs().max().item() <= tol
    grad = torch.randn_like(ref)
    got = backends.BACKWARDS[backend](grad, q, k, v, off, emb, **cfg)
    expected = sample_attention_reference_backward(grad, q, k, v, off, emb, **cfg)
    for name, a, e in zip(("query", "key", "value", "offsets", "embedding"), got, expected):
        if e is None:
            assert a is None
            continue
        assert a.shape == e.shape and a.dtype == e.dtype, name
        assert relative_error(a, e) <= 10 * tol, name


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", FAST)
def test_cpp_matches_reference(backend, case):
    check_backend(backend, case)


@pytest.mark.parametrize("case", ["random-batch2", "integer-positions", "ku5-groups4-heads2", "paper-channels",
                                  "ragged-channel-widths"])
@pytest.mark.parametrize("backend", FAST)
def test_cpp_float64_matches_reference_to_round_off(backend, case):
    check_backend(backend, case, dtype=torch.float64)


@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_matches_reference(case):
    check_backend("triton", case, device=triton_device(), **TRITON_OVERRIDES.get(case, {}))


@pytest.mark.parametrize("backend", FAST)
def test_non_finite_query_poisons_its_pixel_as_in_the_reference(backend):
    # The cpp forward computes float softmaxes a vector at a time with its own exp; a NaN or an
    # infinite logit must still give NaN at that pixel (and only there), as torch's softmax does.
    (q, k, v, off, emb), cfg = make_inputs(b=1, c=64, ch=32, h=4, w=9, spread=2.0)
    q[0, 3, 2, 5] = float("nan")
    q[0, 0, 6, 11] = float("inf")
    out = ops.sample_attention(q, k, v, off, emb, backend=backend, **cfg)
    ref = sample_attention_reference(q, k, v, off, emb, **cfg)
    assert torch.equal(out.isnan(), ref.isnan())
    assert out[0, :, 2, 5].isnan().all() and out[0, :, 6, 11].isnan().all()
    finite = ~ref.isnan()
    assert (out[finite] - ref[finite]).abs().max().item() <= 1e-5


def test_far_samples_give_zero_output():
    (q, k, v, off, emb), cfg = make_inputs(b=1, offsets="far", embedding=False)
    off.fill_(1e4)
    for backend in ["reference", *FAST]:
        out = ops.sample_attention(q, k, v, off, emb, backend=backend, **cfg)
        assert torch.count_nonzero(out) == 0, backend


@pytest.mark.parametrize("backend", ["reference", *FAST, "triton"])
def test_output_is_channels_last(backend):
    """Every backend returns the layout of the official code's output (and of the fake tensor)."""
    device = triton_device() if backend == "triton" else "cpu"
    (q, k, v, off, emb), cfg = make_inputs(b=2, c=16, ch=8, h=3, w=4, device=device)
    out = ops.sample_attention(q, k, v, off, emb, backend=backend, **cfg)
    assert out.shape == (2, 16, 6, 8)
    assert out.stride() == (16 * 6 * 8, 1, 8 * 16, 16)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.lda_aqu.sample_attention(*(mode.from_tensor(t) for t in (q, k, v, off, emb)),
                                                  cfg["groups"], cfg["num_heads"], backend)
    assert fake.stride() == out.stride()


@pytest.mark.parametrize("backend", [*FAST, "triton"])
def test_backward_reads_every_gradient_layout(backend):
    """NCHW and channels-last gradients are read in place, anything else is copied; same results."""
    device = triton_device() if backend == "triton" else "cpu"
    (q, k, v, off, emb), cfg = make_inputs(b=2, c=32, ch=16, h=3, w=5, device=device)
    grad = torch.randn(2, 32, 6, 10, device=device)
    expected = backends.BACKWARDS[backend](grad, q, k, v, off, emb, **cfg)
    layouts = {
        "channels_last": grad.contiguous(memory_format=torch.channels_last),
        "strided": torch.randn(2, 64, 6, 10, device=device)[:, ::2].copy_(grad),
        "broadcast": torch.ones(1, 1, 1, 1, device=device).expand(2, 32, 6, 10),
    }
    assert not layouts["strided"].is_contiguous() and layouts["channels_last"].stride()[1] == 1
    for name, g in layouts.items():
        want = expected if name != "broadcast" else backends.BACKWARDS[backend](g.contiguous(), q, k, v, off, emb,
                                                                                 **cfg)
        got = backends.BACKWARDS[backend](g, q, k, v, off, emb, **cfg)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6, msg=name)


def test_cpp_float64_gradcheck():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("cpp backend unavailable")
    for kwargs in (dict(b=2, c=6, ch=4, h=3, w=4, spread=2.5), dict(b=1, c=8, ch=4, h=2, w=3, heads=2, points=4)):
        (q, k, v, off, emb), cfg = make_inputs(dtype=torch.float64, **kwargs)
        inputs = [t.requires_grad_() for t in (q, k, v, off, emb)]

        def fn(*args, cfg=cfg):
            return ops.sample_attention(*args, backend="cpp", **cfg)

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_opcheck(backend):
    (q, k, v, off, emb), cfg = make_inputs(b=1, c=8, ch=4, h=3, w=3, spread=2.0)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), off.requires_grad_(), emb.requires_grad_(),
            cfg["groups"], cfg["num_heads"], backend)
    torch.library.opcheck(torch.ops.lda_aqu.sample_attention.default, args)
    (q, k, v, off, _), cfg = make_inputs(b=1, c=8, ch=4, h=2, w=3, embedding=False, seed=1)
    torch.library.opcheck(torch.ops.lda_aqu.sample_attention.default,
                          (q, k, v, off, None, cfg["groups"], cfg["num_heads"], backend))


def test_cpp_backward_is_deterministic():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("cpp backend unavailable")
    (q, k, v, off, emb), cfg = make_inputs(b=2, c=32, ch=16, h=9, w=11, spread=8.0)
    grad = torch.randn(2, 32, 18, 22)
    first = backends.BACKWARDS["cpp"](grad, q, k, v, off, emb, **cfg)
    try:
        torch.use_deterministic_algorithms(True)
        second = backends.BACKWARDS["cpp"](grad, q, k, v, off, emb, **cfg)
        ops.sample_attention(*(t.requires_grad_() for t in (q, k, v, off, emb)), backend="cpp", **cfg).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cpp_backward_with_several_blocks():
    """Three threads give three row blocks with overlapping gradient windows, whatever the CI's cores."""
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("cpp backend unavailable")
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        check_backend("cpp", "paper-channels", b=1, spread=20.0)
    finally:
        torch.set_num_threads(threads)


def test_triton_backward_refuses_deterministic_mode():
    device = triton_device()
    (q, k, v, off, emb), cfg = make_inputs(b=1, c=4, ch=4, h=2, w=2, points=1, device=device)
    grad = torch.ones(1, 4, 4, 4, device=device)
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
            backends.BACKWARDS["triton"](grad, q, k, v, off, emb, **cfg)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="deterministic"):
            backends.BACKWARDS["triton"](grad, q, k, v, off, emb, **cfg)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
def test_triton_half_precision(dtype, tol):
    (q, k, v, off, emb), cfg = make_inputs(b=1, h=3, w=4, dtype=dtype, device=triton_device())
    out = ops.sample_attention(q, k, v, off, emb, backend="triton", **cfg)
    assert out.dtype == dtype
    full = [t.float() for t in (q, k, v, off, emb)]
    ref = sample_attention_reference(*full, **cfg)
    assert relative_error(out, ref) <= tol
    grad = torch.randn_like(ref)
    got = backends.BACKWARDS["triton"](grad.to(dtype), q, k, v, off, emb, **cfg)
    expected = sample_attention_reference_backward(grad, *full, **cfg)
    for name, a, e in zip(("query", "key", "value", "offsets", "embedding"), got, expected):
        assert a.dtype == dtype, name
        # Positions enter the sampling weights, so the offset gradient is the most sensitive.
        assert relative_error(a, e) <= 4 * tol, name


def test_cpp_half_inputs_computed_in_float32():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("cpp backend unavailable")
    (q, k, v, off, emb), cfg = make_inputs(b=1, h=3, w=4, dtype=torch.bfloat16)
    out = ops.sample_attention(q, k, v, off, emb, backend="cpp", **cfg)
    expected = ops.sample_attention(*(t.float() for t in (q, k, v, off, emb)), backend="cpp", **cfg)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.bfloat16())


def test_backend_resolution(monkeypatch):
    monkeypatch.delenv(ops.ENV_BACKEND, raising=False)
    assert ops.backend_names() == ("auto", "reference", "cpp", "triton")
    cpu = ops.available_backends("cpu")
    assert cpu[0] == "reference" and set(cpu) <= {"reference", "cpp", "triton"}
    assert ops.resolve_backend("auto", "cpu") == ("cpp" if "cpp" in cpu else "reference")
    assert ops.resolve_backend("reference", "cuda") == "reference"
    if not torch.cuda.is_available():
        assert ops.available_backends("cuda") == ("reference",)
        assert ops.resolve_backend("auto", "cuda") == "reference"
        with pytest.raises(RuntimeError, match="no CUDA device"):
            ops.resolve_backend("triton", "cuda")
    with pytest.raises(RuntimeError, match="CPU tensors"):
        ops.resolve_backend("cpp", "cuda")
    assert ops.resolve_backend("auto", "meta") == "reference"
    with pytest.raises(ValueError, match="unknown LDA-AQU backend"):
        ops.resolve_backend("fast")


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv(ops.ENV_BACKEND, "reference")
    assert ops.resolve_backend("auto", "cpu") == "reference"
    if "cpp" in ops.available_backends("cpu"):
        assert ops.resolve_backend("cpp", "cpu") == "cpp"  # an explicit name wins
    calls = []
    monkeypatch.setitem(ops.BACKENDS, "reference", lambda *a: calls.append(1) or sample_attention_reference(*a))
    (q, k, v, off, emb), cfg = make_inputs(b=1, h=2, w=2)
    ops.sample_attention(q, k, v, off, emb, **cfg)
    assert calls == [1]
    monkeypatch.setenv(ops.ENV_BACKEND, "cuda-magic")
    with pytest.raises(ValueError, match="LDA_BENCH_BACKEND"):
        ops.resolve_backend("auto", "cpu")


def test_argument_errors():
    (q, k, v, off, emb), cfg = make_inputs(b=1, h=2, w=3)
    with pytest.raises(ValueError, match="unknown LDA-AQU backend"):
        ops.sample_attention(q, k, v, off, emb, backend="gpu", **cfg)
    with pytest.raises(ValueError, match="key must be"):
        ops.sample_attention(q, k[:, :4], v, off, emb, **cfg)
    with pytest.raises(ValueError, match="offsets must be"):
        ops.sample_attention(q, k, v, off[:, :5], emb, **cfg)
    with pytest.raises(ValueError, match="embedding must be"):
        ops.sample_attention(q, k, v, off, emb[:, :3], **cfg)
    with pytest.raises(ValueError, match="share dtype"):
        ops.sample_attention(q, k.double(), v, off, emb, **cfg)
    with pytest.raises(ValueError, match="at least 2 x 2"):
        ops.sample_attention(q[:, :, :1], k, v, off[:, :, :1], emb, **cfg)
    with pytest.raises(ValueError, match="must divide"):
        ops.sample_attention(q, k, v, off, None, groups=2, num_heads=3)


def test_missing_compiler_falls_back_once(monkeypatch, tmp_path):
    """No compiler: one warning, ``auto`` runs the reference, an explicit ``cpp`` says why."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(cpp.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(ops.ENV_BACKEND, raising=False)
    monkeypatch.setattr(cpp, "_EXTENSION", cpp._Extension())
    with pytest.warns(RuntimeWarning, match="C\\+\\+ CPU backend is unavailable.*no C\\+\\+ compiler") as record:
        assert ops.resolve_backend("auto", "cpu") == "reference"
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second resolution must not warn again
        assert ops.resolve_backend("auto", "cpu") == "reference"
        (q, k, v, off, emb), cfg = make_inputs(b=1, h=2, w=2)
        ops.sample_attention(q, k, v, off, emb, **cfg)
    assert "cpp" not in ops.available_backends("cpu")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        ops.resolve_backend("cpp", "cpu")


COMPILE_FOR_GPU = textwrap.dedent("""
    import inspect, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from upsamplers.ops.sample_attention import triton_kernels as tk
    assert not tk.INTERPRET
    consts = dict(C=256, CH=64, G=2, P=9, NH=1, KG=32, KG_PAD=32, CG=128, CG_PAD=128, HP_PAD=16, HAS_EMB=True,
                  BLOCK=32)
    inputs = ("q_ptr", "k_ptr", "v_ptr", "off_ptr", "emb_ptr", "out_ptr", "gout_ptr")
    for dtype in ("fp32", "bf16"):
        for fn, extra in ((tk._fwd_kernel, {}), (tk._bwd_kernel, {"GP_PAD": 32})):
            c = {**consts, **extra}
            names = list(inspect.signature(fn.fn).parameters)
            sig = {n: "constexpr" if n in c else (f"*{dtype}" if n in inputs else "*fp32") if n.endswith("_ptr")
                   else "i32" if n in ("HoWo", "Wo", "H", "W") or n.endswith(("_sb", "_sc", "_sp")) else "fp32"
                   for n in names}
            src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in c.items()})
            triton.compile(src, target=GPUTarget("cuda", 90, 32))
            print(fn.fn.__name__, dtype, "compiled")
""")


def test_triton_kernels_compile_for_a_gpu_target():
    """The compiled (non-interpreted) kernels go through Triton's whole CUDA pipeline for sm_90,
    forward and backward, fp32 and bf16 (no GPU is needed to compile)."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_GPU], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled") == 4
