"""The C++ kernels' page cache: large forward outputs reuse the blocks of dead tensors, within a
limit, without ever handing one block to two live tensors."""

import os
import subprocess
import sys

import pytest
import torch

import upsamplers
from upsamplers.ops.sample_attention import cpp

pytestmark = pytest.mark.skipif(not cpp.is_available(warn=False), reason="the C++ backend could not be built")

MB = 2**20


@pytest.fixture
def cache():
    """A fresh, empty cache with its default limit restored afterwards."""
    cpp.empty_cpu_cache()
    old = cpp.set_cpu_cache_limit(256)
    yield
    cpp.set_cpu_cache_limit(old)
    cpp.empty_cpu_cache()


def _inputs(h=40, w=56, channels=256):
    # 256 x 80 x 112 float32 output = 8.75 MB, above the cache's 2 MB floor.
    query = torch.randn(1, 64, 2 * h, 2 * w)
    key = torch.randn(1, 64, h, w)
    value = torch.randn(1, channels, h, w)
    offsets = torch.randn(1, 2 * 2 * 9, 2 * h, 2 * w)
    return query, key, value, offsets


def test_a_dead_output_block_serves_the_next_call(cache):
    inputs = _inputs()
    first = cpp.forward(*inputs, None, 2, 1)
    expected = first.clone()
    address = first.data_ptr()
    before = cpp.cpu_cache_info()
    del first
    returned = cpp.cpu_cache_info()
    assert returned.cached_bytes >= before.cached_bytes + expected.nbytes
    second = cpp.forward(*inputs, None, 2, 1)
    after = cpp.cpu_cache_info()
    assert second.data_ptr() == address  # the same pages, already mapped
    assert after.hits > returned.hits and after.misses == returned.misses
    torch.testing.assert_close(second, expected, rtol=0, atol=0)


def test_live_outputs_never_share_a_block(cache):
    inputs = _inputs()
    kept = [cpp.forward(*inputs, None, 2, 1) for _ in range(3)]
    snapshot = kept[0].clone()
    addresses = {t.data_ptr() for t in kept}
    assert len(addresses) == 3
    kept.append(cpp.forward(*(t * 2 for t in inputs), None, 2, 1))
    torch.testing.assert_close(kept[0], snapshot, rtol=0, atol=0)  # a later call did not write into it


def test_the_limit_bounds_what_is_kept(cache):
    inputs = _inputs()
    outputs = [cpp.forward(*inputs, None, 2, 1) for _ in range(4)]
    cpp.set_cpu_cache_limit(20)  # two 8.75 MB outputs (rounded up to 10 MB blocks) fit, not four
    del outputs
    info = cpp.cpu_cache_info()
    assert info.limit_bytes == 20 * MB
    assert 0 < info.cached_bytes <= 20 * MB


def test_limit_zero_turns_the_cache_off(cache):
    inputs = _inputs()
    out = cpp.forward(*inputs, None, 2, 1)
    assert cpp.set_cpu_cache_limit(0) == 256
    del out
    assert cpp.cpu_cache_info().cached_bytes == 0
    out = cpp.forward(*inputs, None, 2, 1)  # from plain at::empty now
    expected = upsamplers.ops.sample_attention(*inputs, None, 2, 1, backend="reference")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    del out
    assert cpp.cpu_cache_info().cached_bytes == 0


def test_empty_releases_everything_cached(cache):
    out = cpp.forward(*_inputs(), None, 2, 1)
    del out
    held = cpp.cpu_cache_info().cached_bytes
    assert held > 0
    assert cpp.empty_cpu_cache() == held
    assert cpp.cpu_cache_info().cached_bytes == 0


def test_small_tensors_bypass_the_cache(cache):
    before = cpp.cpu_cache_info()
    out = cpp.forward(*_inputs(h=4, w=5), None, 2, 1)  # 256 x 8 x 10 floats: 80 KB
    del out
    after = cpp.cpu_cache_info()
    assert (after.hits, after.misses, after.cached_bytes) == (before.hits, before.misses, 0)


def test_module_forward_and_backward_stay_exact_on_reused_blocks(cache):
    # Blocks come back with the previous call's data in them: nothing may rely on fresh zeros.
    torch.manual_seed(0)
    m = upsamplers.build("lda_aqu", 64, backend="cpp")
    ref = upsamplers.build("lda_aqu", 64, backend="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 64, 40, 44, requires_grad=True)
    for _ in range(3):
        out = m(x)
        out.backward(torch.ones_like(out))
        grad, x.grad = x.grad, None
        del out
    assert cpp.cpu_cache_info().hits > 0
    expected = ref(x)
    expected.backward(torch.ones_like(expected))
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-4)


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match=">= 0 MB"):
        cpp.set_cpu_cache_limit(-1)


def test_the_package_exports_the_cache_controls():
    assert upsamplers.ops.cpu_cache_info is cpp.cpu_cache_info
    assert upsamplers.ops.set_cpu_cache_limit is cpp.set_cpu_cache_limit
    assert upsamplers.ops.empty_cpu_cache is cpp.empty_cpu_cache


@pytest.mark.parametrize("value,expected_mb", [("0", 0), ("64", 64), ("", 256)])
def test_limit_from_the_environment(value, expected_mb):
    env = {**os.environ, "LDA_BENCH_CPU_CACHE_MB": value}
    code = "from upsamplers.ops.sample_attention import cpp; print(cpp.cpu_cache_info().limit_bytes)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) == expected_mb * MB
