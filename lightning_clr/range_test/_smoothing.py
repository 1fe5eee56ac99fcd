"""Smoothing and noise of a range-test curve, pure and torch-free: the bias-corrected EMA the sweep records,
a robust noise estimate, the centered smoother that noisy curves are read with, and the sweep's stop rule.

Example:
    >>> [round(v, 12) for v in smooth([2.0, 2.0, 2.0], 0.05)]
    [2.0, 2.0, 2.0]
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

__all__ = ["TINY", "BiasCorrectedEMA", "DivergenceCheck", "noise_sigma", "noise_sigma_of", "noise_space",
           "robust_smooth", "smooth"]


class BiasCorrectedEMA:
    """Exponential moving average with exact bias correction: after ``k`` values,
    ``avg_k = beta * avg_{k-1} + (1 - beta) * x_k`` and the result is ``avg_k / (1 - beta**k)``,
    so a constant input gives that constant back from the first value on.

    Example:
        >>> ema = BiasCorrectedEMA(smoothing=0.05)
        >>> [round(ema.update(2.0), 12) for _ in range(3)]
        [2.0, 2.0, 2.0]
    """

    def __init__(self, smoothing: float) -> None:
        if not (0 < smoothing <= 1):
            raise ValueError(f"`smoothing` must be in (0, 1], got {smoothing!r}")
        self.beta = 1.0 - smoothing
        self.avg = 0.0
        self.count = 0

    def update(self, value: float) -> float:
        self.count += 1
        self.avg = self.beta * self.avg + (1.0 - self.beta) * value
        return self.avg / (1.0 - self.beta**self.count)


TINY = 1e-30  # below this a loss or a scale counts as 0 (log space clamps to it; no scale is smaller)


def smooth(values: Sequence[float], smoothing: float) -> list[float]:
    """Bias-corrected EMA of a whole sequence (see :class:`BiasCorrectedEMA`)."""
    ema = BiasCorrectedEMA(smoothing)
    return [ema.update(float(v)) for v in values]


def noise_space(values: Sequence[float]) -> tuple[list[float], Callable[[float], float]]:
    """The log of the values when all are > 0 (multiplicative noise becomes additive), else the values over
    their median magnitude. Returns the transformed values and the inverse transform."""
    vals = [float(v) for v in values]
    if vals and min(vals) > 0:
        return [math.log(v) for v in vals], math.exp
    mags = sorted(abs(v) for v in vals)
    scale = mags[len(mags) // 2] if mags and mags[len(mags) // 2] > TINY else 1.0  # 0 or a denormal: no scale
    return [v / scale for v in vals], lambda v: v * scale


def noise_sigma(values: Sequence[float]) -> float:
    """Robust per-point noise of a curve, in log units (relative units when a value is <= 0): the median
    absolute second difference / 0.6745 / sqrt(6). A smooth trend has second differences near 0, so a clean
    curve gives about 0; a few outliers or the blow-up at the end do not move a median.

    Example:
        >>> noise_sigma([2.0 ** -i for i in range(10)]) < 1e-12  # a clean geometric fall
        True
        >>> round(noise_sigma([1.0, 3.0] * 10), 2)  # every batch 3x off the last
        1.33
    """
    return noise_sigma_of(noise_space(values)[0])


def noise_sigma_of(z: Sequence[float]) -> float:
    """:func:`noise_sigma` of values already in their noise space (:func:`noise_space`'s first result)."""
    second = sorted(abs(z[i + 1] - 2 * z[i] + z[i - 1]) for i in range(1, len(z) - 1))
    if not second:
        return 0.0
    mid = len(second) // 2
    med = second[mid] if len(second) % 2 else 0.5 * (second[mid - 1] + second[mid])
    return med / 0.6745 / math.sqrt(6.0)


def robust_smooth(values: Sequence[float], half_width: int) -> list[float]:
    """Centered running median, then centered running mean, both over ``2 * half_width + 1`` points (fewer at
    the ends), in log space when every value is > 0. Centered, so it does not lag like an EMA, and it does not
    start at whatever the first batch happened to be. ``half_width=0`` returns the values.

    Example:
        >>> [round(v, 6) for v in robust_smooth([4.0, 1.0, 4.0, 1.0, 4.0], 0)]
        [4.0, 1.0, 4.0, 1.0, 4.0]
        >>> robust_smooth([1.0, 1.0, 50.0, 1.0, 1.0], 1)  # a single spike is gone
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    z, back = noise_space(values)
    n, h = len(z), max(0, int(half_width))
    med = []
    for i in range(n):
        window = sorted(z[max(0, i - h) : i + h + 1])
        k = len(window) // 2
        med.append(window[k] if len(window) % 2 else 0.5 * (window[k - 1] + window[k]))
    mean = [sum(med[max(0, i - h) : i + h + 1]) / len(med[max(0, i - h) : i + h + 1]) for i in range(n)]
    return [back(v) for v in mean]


class DivergenceCheck:
    """The sweep's stop rule: the smoothed loss above ``threshold`` x the best smoothed loss so far. The best
    counts only from point ``warmup`` on (``warmup = min(1 / smoothing, num_steps / 10)`` points): before,
    the bias-corrected EMA is the mean of a few batches, and with tiny batches one low first batch made the
    EMA, rising back to the true level, "diverge" a few steps into the sweep.

    Example:
        >>> check = DivergenceCheck(threshold=4.0, smoothing=0.05, num_steps=100)
        >>> [check.update(v) for v in [0.1] + [1.0] * 11 + [5.0]]  # a low first point, then a blow-up
        [False, False, False, False, False, False, False, False, False, False, False, False, True]
    """

    def __init__(self, threshold: float, smoothing: float, num_steps: int) -> None:
        self.threshold = float(threshold)
        self.warmup = max(1, min(math.ceil(1.0 / smoothing), num_steps // 10))
        self.best: Optional[float] = None
        self.count = 0

    def update(self, smoothed: float) -> bool:
        """Take the next smoothed loss; True when the sweep should stop."""
        self.count += 1
        if self.count < self.warmup:
            return False
        self.best = smoothed if self.best is None else min(self.best, smoothed)
        return self.best > 0 and smoothed > self.threshold * self.best
