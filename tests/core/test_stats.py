import pytest

from lda_bench.core.stats import iqr, mann_whitney_u, median, quartiles, relative_iqr


def test_median_iqr():
    assert median([3, 1, 2]) == 2
    assert iqr([1, 2, 3, 4, 5]) == 2.0
    assert relative_iqr([1, 2, 3, 4, 5]) == pytest.approx(2 / 3)


def test_mann_whitney_matches_hand_computation():
    # a = [1, 2, 3], b = [4, 5, 6]: ranks of a = 1, 2, 3 -> R1 = 6, U1 = 6 - 3*4/2 = 0.
    # mu = 4.5, sigma = sqrt(3*3*7/12) = 2.2913; z = (4.5 - 0.5)/2.2913 = 1.7457; p = erfc(z/sqrt 2) = 0.0809
    u, p = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert u == 0
    assert p == pytest.approx(0.0809, abs=1e-4)


def test_mann_whitney_with_ties():
    # a = [1, 2, 2], b = [2, 3, 4]: the three 2s share rank 3. R1 = 1 + 3 + 3 = 7, U1 = 1.
    # tie term = (27 - 3) / (6 * 5) = 0.8; sigma = sqrt(9/12 * (7 - 0.8)) = 2.1564
    # z = (|1 - 4.5| - 0.5) / 2.1564 = 1.3912; p = 0.1642
    u, p = mann_whitney_u([1, 2, 2], [2, 3, 4])
    assert u == 1
    assert p == pytest.approx(0.1642, abs=1e-4)


def test_mann_whitney_separated_samples_are_significant():
    a = [1.0 + 0.01 * i for i in range(20)]
    b = [2.0 + 0.01 * i for i in range(20)]
    assert mann_whitney_u(a, b)[1] < 1e-6
    assert mann_whitney_u(a, a)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mann_whitney_u([], [1.0])


def test_quartiles():
    assert quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert quartiles([1.0, 2.0, 3.0]) == (2.0, 2.0, 2.0)  # below 4 values: the median
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
