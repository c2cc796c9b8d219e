"""Binomial statistics of the evaluation (docs/method.md §6).

`majority` turns R judging draws into one verdict per example (a vote), `wilson` bounds a
proportion, `mean_interval` the mean of per-example rates, and
`paired_difference` (with `not_greater` / `same_rate`) compares two rows on the same examples: a
two-sided normal bound on the mean paired difference (McNemar-style: only discordant pairs count),
so that mask noise alone does not make two rows differ.
"""

from __future__ import annotations

import math

import numpy as np

Z = 1.96  # two-sided ~95%


def majority(correct: np.ndarray) -> np.ndarray:
    """Per example, correct on a strict majority of the R draws.

    Args:
      correct: bool [R, N], correct[r, i] for draw r and example i.

    Returns:
      bool [N]; with R even a tie counts as not correct.
    """
    correct = np.asarray(correct, bool)
    if correct.ndim != 2:
        raise ValueError(f"correct must be [R, N], got shape {correct.shape}.")
    return 2 * correct.sum(axis=0) > correct.shape[0]


def wilson(k: int, n: int, *, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: np.ndarray, *, z: float = Z) -> tuple[float, float]:
    """~95% normal interval of the mean of per-example values in [0, 1], clipped to [0, 1]."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return 0.0, 1.0
    half = z * math.sqrt(v.var(ddof=1) / v.size) if v.size > 1 else 1.0
    m = float(v.mean())
    return max(0.0, m - half), min(1.0, m + half)


def paired_difference(a: np.ndarray, b: np.ndarray, *, z: float = Z) -> tuple[float, float]:
    """Mean of a_i - b_i over paired per-example outcomes and the half-width of its ~95% bound.

    a and b are per-example correctness (bool) or correctness rates over draws (float in [0, 1]).
    The variance is that of the paired differences (McNemar: only discordant pairs count).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be non-empty 1-D of one shape, got {a.shape}, {b.shape}.")
    d = a - b
    n = d.size
    return float(d.mean()), float(z * math.sqrt(d.var() / n))


def not_greater(a: np.ndarray, b: np.ndarray, *, z: float = Z) -> bool:
    """True unless accuracy `a` is significantly greater than accuracy `b` (paired)."""
    diff, half = paired_difference(a, b, z=z)
    return diff <= half


def same_rate(a: np.ndarray, b: np.ndarray, *, z: float = Z) -> bool:
    """True unless the paired accuracies differ significantly (two-sided)."""
    diff, half = paired_difference(a, b, z=z)
    return abs(diff) <= half
