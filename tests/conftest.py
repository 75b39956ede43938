import os

# The Triton interpreter must be chosen before any kernel module is imported (see
# docs/triton-kernels.md); on machines with a GPU set LDA_BENCH_TEST_TRITON_GPU=1 to test
# the compiled kernels instead.
if os.environ.get("LDA_BENCH_TEST_TRITON_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# Property-based tests: deterministic examples (the same in every run and in CI), no example database
# written into the checkout, no per-example deadline (the machine is shared and slow).
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass
else:
    _hypothesis_settings.register_profile("lda-bench", derandomize=True, database=None, deadline=None,
                                          max_examples=150)
    _hypothesis_settings.load_profile("lda-bench")
