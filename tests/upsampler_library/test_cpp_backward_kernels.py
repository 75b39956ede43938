"""The C++ kernels the module's backward takes from the cpp backend (``BackwardKernels``): the layout
changes (``lda_aqu_cpp::relayout_`` behind ``to_memory_format`` and ``add_across_layouts_``: exact
copies and sums between NCHW and channels-last, every direction, odd shapes) and the upsampling's
gradient (``lda_aqu_cpp::upsample_backward``, against ATen's), with ATen's behaviour wherever a
kernel does not apply."""

import pytest
import torch

from upsamplers.ops.lda_aqu_module import cpp as module_cpp
from upsamplers.ops.lda_aqu_module.backward import ATEN_KERNELS
from upsamplers.ops.sample_attention import cpp

pytestmark = pytest.mark.skipif(not cpp.is_available(warn=False), reason="the C++ backend could not be built")

FORMATS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}
# Whole 16 x 16 tiles, ragged edges on both sides, one channel, one pixel, one row, batch > 1.
SHAPES = [(1, 32, 16, 16), (2, 37, 5, 19), (1, 256, 3, 17), (1, 1, 4, 6), (3, 5, 1, 1), (2, 3, 1, 7), (1, 18, 9, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("src_format", FORMATS, ids=str)
@pytest.mark.parametrize("dst_format", FORMATS, ids=str)
def test_copies_and_sums_are_exact_in_every_direction(dtype, shape, src_format, dst_format):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    src = x.contiguous(memory_format=FORMATS[src_format])
    copied = cpp.to_memory_format(src, FORMATS[dst_format])
    assert copied.is_contiguous(memory_format=FORMATS[dst_format])
    assert torch.equal(copied, x)
    if src_format == dst_format:
        assert copied is src  # already in that layout: no copy

    dst = torch.randn(shape, generator=gen, dtype=dtype).contiguous(memory_format=FORMATS[dst_format])
    expected = dst + x
    pointer = dst.data_ptr()
    assert cpp.add_across_layouts_(dst, src) is dst
    assert dst.data_ptr() == pointer and dst.is_contiguous(memory_format=FORMATS[dst_format])
    assert torch.equal(dst, expected)


def test_a_large_map_uses_every_thread_and_stays_exact():
    x = torch.randn(2, 32, 70, 90)
    assert torch.equal(cpp.to_memory_format(x, torch.channels_last), x)
    cl = x.contiguous(memory_format=torch.channels_last)
    dst = torch.ones(2, 32, 70, 90)
    cpp.add_across_layouts_(dst, cl)
    assert torch.equal(dst, x + 1)


@pytest.mark.parametrize("case", ["half", "strided", "3-d", "preserve"])
def test_what_the_kernel_does_not_take_goes_through_aten(case):
    x = torch.randn(2, 6, 5, 7)
    if case == "half":
        t = x.half()
    elif case == "strided":
        t = x[:, ::2]
    elif case == "3-d":
        t = x[0]
        out = cpp.to_memory_format(t, torch.contiguous_format)
        assert out is t
        return
    else:
        t = x
        out = cpp.to_memory_format(t, torch.preserve_format)
        assert torch.equal(out, t)
        return
    out = cpp.to_memory_format(t, torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, t)
    dst = torch.zeros(t.shape, dtype=t.dtype)
    cpp.add_across_layouts_(dst, out)
    assert torch.equal(dst, t)


def test_mismatched_dtypes_add_through_aten():
    dst = torch.zeros(1, 4, 3, 5, dtype=torch.float64)
    src = torch.randn(1, 4, 3, 5).contiguous(memory_format=torch.channels_last)
    cpp.add_across_layouts_(dst, src)
    assert torch.equal(dst, src.double())


@pytest.mark.parametrize("bad", ["shape", "dtype", "strided", "same"])
def test_the_operator_refuses_bad_arguments(bad):
    ops = cpp.library_ops()
    dst = torch.zeros(1, 4, 3, 5)
    src = torch.randn(1, 4, 3, 5)
    if bad == "shape":
        src = torch.randn(1, 4, 5, 3)
    elif bad == "dtype":
        src = src.double()
    elif bad == "strided":
        src = torch.randn(1, 8, 3, 5)[:, ::2]
    else:
        src = dst
    with pytest.raises(RuntimeError, match="relayout_"):
        ops.relayout_(dst, src, True)


def test_the_cpp_backend_passes_its_kernels_to_the_module_backward():
    from upsamplers.ops.lda_aqu_module import op

    assert op.BACKWARD_KERNELS["cpp"] is module_cpp.BACKWARD_KERNELS
    assert module_cpp.BACKWARD_KERNELS.convert is cpp.to_memory_format
    assert module_cpp.BACKWARD_KERNELS.accumulate is cpp.add_across_layouts_
    assert module_cpp.BACKWARD_KERNELS.upsample_backward is module_cpp.upsample_backward
    assert "reference" not in op.BACKWARD_KERNELS and "triton" not in op.BACKWARD_KERNELS  # ATEN_KERNELS


def test_aten_layouts_agree_with_the_kernels():
    x = torch.randn(2, 9, 4, 11)
    for fmt in FORMATS.values():
        assert torch.equal(ATEN_KERNELS.convert(x, fmt), cpp.to_memory_format(x, fmt))
    a, b = torch.randn(2, 9, 4, 11), x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(ATEN_KERNELS.accumulate(a.clone(), b), cpp.add_across_layouts_(a.clone(), b))


# The gradient of the query's upsampling (bilinear, align_corners=True): rows, then columns.
UPSAMPLE_CASES = [
    ((1, 64, 208, 336), (104, 168)),  # P2
    ((2, 3, 7, 9), (4, 5)),  # batch, odd sizes
    ((1, 2, 1, 1), (1, 1)),  # one pixel
    ((1, 2, 5, 1), (3, 1)),  # one column
    ((1, 1, 1, 6), (1, 2)),  # one row, scale 3
    ((1, 3, 9, 13), (3, 4)),  # non-square, scale about 3
    ((1, 1, 4, 4), (4, 4)),  # scale 1
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,size", UPSAMPLE_CASES)
def test_upsample_backward_matches_aten(shape, size, dtype):
    grad = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(sum(shape)))
    expected = ATEN_KERNELS.upsample_backward(grad, size)
    got = module_cpp.upsample_backward(grad, size)
    assert got.shape == expected.shape and got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * float(expected.abs().max()))


def test_upsample_backward_is_the_adjoint_of_the_upsampling():
    # <up(x), g> = <x, up^T(g)> for the query's own upsampling, in float64.
    from upsamplers.ops.lda_aqu_module.reference import upsample_query

    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    g = torch.randn(2, 3, 10, 14, dtype=torch.float64)
    lhs = (upsample_query(x, 2) * g).sum()
    rhs = (x * module_cpp.upsample_backward(g, (5, 7))).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_upsample_backward_falls_back_to_aten_and_checks_its_arguments():
    strided = torch.randn(1, 4, 6, 8)[:, ::2]
    torch.testing.assert_close(module_cpp.upsample_backward(strided, (3, 4)),
                               ATEN_KERNELS.upsample_backward(strided, (3, 4)))
    half = torch.randn(1, 2, 6, 8).to(torch.bfloat16)
    assert module_cpp.upsample_backward(half, (3, 4)).dtype == torch.bfloat16
    ops = cpp.library_ops()
    with pytest.raises(RuntimeError, match="upsample_backward"):
        ops.upsample_backward(torch.randn(2, 6, 8), 3, 4)
    with pytest.raises(RuntimeError, match="upsample_backward"):
        ops.upsample_backward(torch.randn(1, 2, 6, 8), 0, 4)
    with pytest.raises(RuntimeError, match="upsample_backward"):
        ops.upsample_backward(torch.randn(1, 2, 6, 8).to(torch.int32), 3, 4)
