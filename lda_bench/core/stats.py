"""Small statistics used by the regression gate (no SciPy dependency)."""

from __future__ import annotations

import math
import random
import statistics
from typing import Sequence


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Lower quartile, median, upper quartile (inclusive method); the median three times below 4 values."""
    if len(values) < 4:
        m = median(values)
        return m, m, m
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def relative_iqr(values: Sequence[float]) -> float:
    """IQR / median: the spread of a sample relative to its centre."""
    m = median(values)
    return iqr(values) / m if m else math.inf


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) of ``values`` and the sizes of tied groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test: (U statistic of ``a``, p-value).

    Normal approximation with tie and continuity corrections, as asv and SciPy's
    ``method="asymptotic"`` use; adequate from about 8 samples per group.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney_u needs two non-empty samples")
    ranks, ties = _ranks(list(a) + list(b))
    r1 = sum(ranks[:n1])
    u1 = r1 - n1 * (n1 + 1) / 2
    mu = n1 * n2 / 2
    n = n1 + n2
    tie_term = sum(t**3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
    if sigma == 0:
        return u1, 1.0
    z = (abs(u1 - mu) - 0.5) / sigma
    p = math.erfc(max(z, 0.0) / math.sqrt(2))
    return u1, min(1.0, p)


def wilcoxon_signed_rank(differences: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired differences against 0: (W+, p-value).

    Zero differences are dropped (Wilcoxon's convention); normal approximation with tie and
    continuity corrections, as SciPy's ``method="approx"``; adequate from about 10 pairs.
    """
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    if n == 0:
        return 0.0, 1.0
    ranks, ties = _ranks([abs(d) for d in nonzero])
    w_plus = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    mu = n * (n + 1) / 4
    sigma = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48)
    if sigma == 0:
        return w_plus, 1.0
    z = (abs(w_plus - mu) - 0.5) / sigma
    return w_plus, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def bootstrap_median_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median (seeded: the same data give the same
    interval)."""
    if not values:
        raise ValueError("bootstrap_median_ci needs a non-empty sample")
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    low = medians[min(resamples - 1, max(0, int(math.floor(tail * resamples))))]
    high = medians[min(resamples - 1, max(0, int(math.ceil((1 - tail) * resamples)) - 1))]
    return low, high


def power_law_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float | None, float]:
    """Least-squares fit of ``y = c * x**k`` on log-log axes: (k, standard error of k, c).

    The standard error needs at least three points (None with two); all values must be positive.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("power_law_fit needs at least two (x, y) pairs")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("power_law_fit needs positive values")
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    n = len(lx)
    mx, my = sum(lx) / n, sum(ly) / n
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("power_law_fit needs at least two different x values")
    k = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx
    intercept = my - k * mx
    stderr = None
    if n > 2:
        residual = sum((b - (intercept + k * a)) ** 2 for a, b in zip(lx, ly))
        stderr = math.sqrt(residual / (n - 2) / sxx)
    return k, stderr, math.exp(intercept)
