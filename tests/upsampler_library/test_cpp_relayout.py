"""The C++ layout changes the module's backward uses (``lda_aqu_cpp::relayout_`` behind
``to_memory_format`` and ``add_across_layouts_``): exact copies and sums between NCHW and
channels-last, every direction, odd shapes, and ATen's behaviour wherever the kernel does not apply."""

import pytest
import torch

from upsamplers.ops.lda_aqu_module import cpp as module_cpp
from upsamplers.ops.lda_aqu_module.backward import ATEN_LAYOUTS
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


def test_the_cpp_backend_passes_its_layouts_to_the_module_backward():
    from upsamplers.ops.lda_aqu_module import op

    assert op.LAYOUTS["cpp"] is module_cpp.LAYOUTS
    assert module_cpp.LAYOUTS.convert is cpp.to_memory_format
    assert module_cpp.LAYOUTS.accumulate is cpp.add_across_layouts_
    assert "reference" not in op.LAYOUTS and "triton" not in op.LAYOUTS  # those use ATEN_LAYOUTS


def test_aten_layouts_agree_with_the_kernels():
    x = torch.randn(2, 9, 4, 11)
    for fmt in FORMATS.values():
        assert torch.equal(ATEN_LAYOUTS.convert(x, fmt), cpp.to_memory_format(x, fmt))
    a, b = torch.randn(2, 9, 4, 11), x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(ATEN_LAYOUTS.accumulate(a.clone(), b), cpp.add_across_layouts_(a.clone(), b))
