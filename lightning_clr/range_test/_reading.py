"""How the LR range test's loss curve is read, before any rule applies: the finite prefix in log-LR, a centered
robust smoothing whose width follows the curve's own per-batch noise, the level a drop is measured from, the
first instability and where the curve's bottom ends. Pure Python (no Lightning, no torch); the rules that turn a
reading into bounds are in ``_rules``.

Example:
    >>> lrs = [10 ** (-4 + 0.1 * i) for i in range(41)]
    >>> raw = [1.0 if lr < 1e-2 else 0.2 for lr in lrs]  # a clean step down at 1e-2
    >>> r = read_curve(lrs, raw, raw)
    >>> r.noisy, r.half_width, len(r.xs) == len(lrs) - 2 * r.half_width
    (False, 1, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from lightning_clr.range_test._smoothing import noise_sigma, noise_space, robust_smooth

__all__ = [
    "Reading",
    "bottom_end",
    "finite_prefix",
    "first_instability",
    "read_curve",
    "small_batch_factor",
    "start_level",
    "within_noise",
]

MIN_POINTS = 5  # fewer finite points than this: no rule is trusted, explicit fallback
RISE_BACK = 0.5  # the curve's bottom ends where it has risen back by half its drop (or at the first instability)
INSTABILITY_FACTOR = 1.3  # a raw loss this many times the best EMA loss so far: the first instability
# The rules read a centered robust smoothing of the raw losses (see read_curve). sigma is the per-point noise of
# the raw curve in log units (see noise_sigma; measured values: docs/evidence.md).
CLEAN_HALF_WIDTH = 1  # a clean curve: a 3-point median, then a 3-point mean (one odd batch is not the curve)
NOISE_FREE = 0.05  # from this sigma on, a curve is noisy:
NOISE_PER_POINT = 0.1  # the smoother's half-width grows by one point per 0.1 of sigma ...
MAX_HALF_WIDTH = 5  # ... up to 5 (11 points: 0.9 decade at the default 100 steps over 8 decades),
NOISE_SIGMAS = 3.0  # a drop counts only if it exceeds this many sigmas of the smoothed curve's noise,
INSTABILITY_SIGMAS = 4.0  # an instability must exceed 1.3 x the best EMA loss by this many sigmas more.
# Below NOISE_FREE, the per-batch noise of a classification loss measures the batch: digits at batch 32 read
# sigma 0.011-0.018, at batch 8 0.026-0.043 (Fashion-MNIST at 128: 0.003-0.005). The curve's LRs hardly move
# with the batch, but the best max_lr does, in proportion (digits: 0.2 at batch 32, 0.05 at batch 8, with a cliff
# at 0.2), as the linear-scaling rule says: so on a clean curve noisier than this, max_lr is scaled by
# SMALL_BATCH_SIGMA / sigma (see small_batch_factor).
SMALL_BATCH_SIGMA = 0.015


def finite_prefix(lrs: Sequence[float], curve: Sequence[float]) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for lr, y in zip(lrs, curve):
        if y is None or not math.isfinite(y) or not math.isfinite(lr) or lr <= 0:
            break
        xs.append(math.log(lr))
        ys.append(float(y))
    return xs, ys


def first_instability(
    ys: list[float], reference: Sequence[float], raw: Sequence[float], start: float, flat: float, sigma: float
) -> Optional[int]:
    """Index of the first raw loss above ``INSTABILITY_FACTOR`` x the best ``reference`` loss so far, once the
    read curve ``ys`` has started to fall. ``reference`` is the sweep's bias-corrected EMA: it trails the raw
    losses, so during a steep fall it stays above them and only a real blow-up counts (the centered smoothing
    leads a fall by up to its half-width, and would). On a noisy curve (per-point noise ``sigma`` in log units,
    0 below ``NOISE_FREE``) the raw loss must exceed that by ``INSTABILITY_SIGMAS`` sigmas more, so that noise
    alone does not count as an instability."""
    factor = INSTABILITY_FACTOR * math.exp(INSTABILITY_SIGMAS * sigma)
    best = math.inf
    for k in range(1, min(len(ys), len(reference), len(raw))):
        if ys[k - 1] >= start - flat:
            continue  # not falling yet: an EMA anchored on an odd first batch is not a level to compare with
        best = min(best, reference[k - 1])
        if best <= 0:
            continue  # a ratio to a loss <= 0 (a Gaussian NLL, say) says nothing: the bottom ends by RISE_BACK
        value = raw[k]
        if value is not None and math.isfinite(value) and value > factor * best:
            return k
    return None


@dataclass(frozen=True)
class Reading:
    """The curve the rules read: log-LRs ``xs``, values ``ys``, the aligned raw losses and sweep EMA (``None``
    when the curve is read as given), the raw curve's noise ``sigma``, the smoother's ``half_width`` (0: read as
    given) and the noise of ``ys`` itself (log units, 0 on a clean curve)."""

    xs: list[float]
    ys: list[float]
    raw: Optional[list[float]]
    reference: Optional[list[float]]
    sigma: float
    half_width: int
    noise: float

    @property
    def noisy(self) -> bool:
        return self.sigma >= NOISE_FREE


def read_curve(lrs: Sequence[float], curve: Sequence[float], raw: Optional[Sequence[float]]) -> Reading:
    """With ``raw`` (the unsmoothed losses), the rules read a centered robust smoothing of them
    (:func:`robust_smooth`): half-width ``CLEAN_HALF_WIDTH`` on a clean curve, one point more per
    ``NOISE_PER_POINT`` of per-point noise on a noisy one (tiny batches), and the first ``2 * half_width``
    points, whose windows are cut short, are dropped (no bound comes from an odd first batch). Centered, it does
    not lag: ``curve``, the sweep's bias-corrected EMA, trails the raw losses by about ``1/smoothing`` points, and
    its minimum can sit far past the raw curve's (docs/evidence.md). Without
    ``raw`` (a metric's curve), ``curve`` is read as given."""
    xs, ys = finite_prefix(lrs, curve)
    if raw is None:
        return Reading(xs, ys, None, None, 0.0, 0, 0.0)
    raw_xs, raw_ys = finite_prefix(lrs, raw)
    n = min(len(xs), len(raw_xs))
    xs, ys, raw_ys = xs[:n], ys[:n], raw_ys[:n]
    sigma = noise_sigma(raw_ys) if n >= MIN_POINTS else 0.0
    # At most a fifteenth of the curve: on a 16-point sweep a wider window mixes the blow-up into the minimum.
    h = 0
    if n >= MIN_POINTS:
        h = max(CLEAN_HALF_WIDTH, min(MAX_HALF_WIDTH, math.ceil(sigma / NOISE_PER_POINT), n // 15))
    smoothed = robust_smooth(raw_ys, h)
    noise = 1.25 * sigma / math.sqrt(2 * h + 1) if sigma >= NOISE_FREE else 0.0  # a median's error: 1.25x a mean's
    cut = 2 * h  # a point's median-then-mean window reaches 2h points back: the first 2h see a cut-short window
    return Reading(xs[cut:], smoothed[cut:], raw_ys[cut:], ys[cut:], sigma, h, noise)


def start_level(ys: list[float], i_min: int) -> float:
    """The level a drop is measured from: the median of the curve's first half up to its minimum (the plateau
    before the fall), or its first point where that is higher (a curve falling from the start). Not the first
    point alone: a noisy first batch, high or low, is not the curve."""
    head = sorted(ys[: max(1, i_min // 2)])
    k = len(head) // 2
    median = head[k] if len(head) % 2 else 0.5 * (head[k - 1] + head[k])
    return max(ys[0], median)


def within_noise(start: float, low: float, noise: float) -> bool:
    """Whether the drop from the start to the minimum is within ``NOISE_SIGMAS`` of the curve's own noise."""
    if noise <= 0:
        return False
    z, _ = noise_space([start, low])
    return z[0] - z[1] <= NOISE_SIGMAS * noise


def small_batch_factor(sigma: float) -> float:
    """What ``max_lr`` is multiplied by on a clean curve (``sigma`` below ``NOISE_FREE``): 1 up to
    ``SMALL_BATCH_SIGMA``, then ``SMALL_BATCH_SIGMA / sigma``. A curve this noisy comes from small batches, where
    the best LR falls with the batch (the linear-scaling rule: about in proportion, and sigma grows as one over
    the root of the batch) while the curve's bottom hardly moves over a 100-step sweep. A noisy curve (sigma at
    or above ``NOISE_FREE``: a regression's loss, whose per-row spread is its own) is read by its own rules.

    Example:
        >>> small_batch_factor(0.01), small_batch_factor(0.03), small_batch_factor(0.3)
        (1.0, 0.5, 1.0)
    """
    if sigma <= SMALL_BATCH_SIGMA or sigma >= NOISE_FREE:
        return 1.0
    return SMALL_BATCH_SIGMA / sigma


def bottom_end(ys: list[float], i_min: int, drop: float) -> int:
    """Where the curve's bottom ends: the first point past the minimum at which the read curve has risen back by
    ``RISE_BACK`` of its drop (the last point if it never does)."""
    level = ys[i_min] + RISE_BACK * drop
    return next((i for i in range(i_min, len(ys)) if ys[i] >= level), len(ys) - 1)
