"""Pure math of the LR range test: the bias-corrected EMA, the LR sweep, and the rules that read both
CLR bounds off a curve. No Lightning and no torch here, so every rule can be tested on synthetic curves.

All rules work in log-LR space on a curve where *lower is better* (a loss, or a negated accuracy) and
return a :class:`Suggestion`; none returns ``None``. When the curve is too short or flat they fall back
explicitly (``fallback=True``) and say why in ``reason``.

Example:
    >>> lrs = sweep_lrs(1e-4, 1.0, 50)
    >>> curve = [1.0 if lr < 1e-2 else 0.1 for lr in lrs]  # a step down at 1e-2
    >>> s = suggest(lrs, curve, "minimum", fallback_max_lr=0.01)
    >>> s.fallback, round(s.max_lr / s.base_lr, 6)
    (False, 4.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

__all__ = [
    "BiasCorrectedEMA",
    "DivergenceCheck",
    "RULES",
    "Suggestion",
    "noise_sigma",
    "robust_smooth",
    "smooth",
    "suggest",
    "suggest_all",
    "sweep_lrs",
]

RULES = ("smith", "valley", "steepest", "minimum")
MIN_POINTS = 5  # fewer finite points than this: no rule is trusted, explicit fallback
FLAT_TOLERANCE = 0.02  # a total drop below 2% of the starting value counts as flat
DIVERGENCE_GAP = 3.0  # every rule keeps max_lr at least this factor below the LR of the curve's minimum
INSTABILITY_FACTOR = 1.3  # a raw loss this many times the best smoothed loss so far: the first instability
MINIMUM_DIVISOR = 10.0  # the "minimum" rule: a tenth of the minimum's LR (Fashion-MNIST: the minimum diverged)
DEFAULT_BASE_DIVISOR = 4.0  # Smith: base_lr = max_lr / 3 .. / 4
# Noisy curves (tiny batches: consecutive losses differ by 2-3x at a fixed LR). sigma is the per-point noise of
# the raw curve in log units (see noise_sigma); the small regression of issue 12 measured 0.45-0.75, digits 0.02.
NOISE_FREE = 0.05  # below this sigma the curve is read as given (the caller's EMA), as before
NOISE_PER_POINT = 0.1  # above it, the centered smoother's half-width is one point per 0.1 of sigma ...
MAX_HALF_WIDTH = 5  # ... up to 5 (11 points: 0.9 decade at the default 100 steps over 8 decades)
NOISE_SIGMAS = 3.0  # a drop counts only if it exceeds this many sigmas of the smoothed curve's noise
INSTABILITY_SIGMAS = 4.0  # a raw loss must exceed 1.3 x the best smoothed loss by this many sigmas more
NOISY_DIVERGENCE_GAP = 2.0  # the gap below the minimum of the centered smoothing, which does not lag (see suggest)


def sweep_lrs(min_lr: float, max_lr: float, num_steps: int, mode: str = "exponential") -> list[float]:
    """The LRs of the sweep, first ``min_lr`` and last ``max_lr``, evenly spaced in log or linear space.

    Example:
        >>> [round(x, 12) for x in sweep_lrs(1e-3, 1e-1, 3)]
        [0.001, 0.01, 0.1]
    """
    if num_steps < 2:
        raise ValueError(f"`num_steps` must be >= 2, got {num_steps!r}")
    if mode == "exponential":
        ratio = math.log(max_lr / min_lr)
        return [min_lr * math.exp(ratio * i / (num_steps - 1)) for i in range(num_steps)]
    if mode == "linear":
        return [min_lr + (max_lr - min_lr) * i / (num_steps - 1) for i in range(num_steps)]
    raise ValueError(f"`mode` must be 'exponential' or 'linear', got {mode!r}")


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


def smooth(values: Sequence[float], smoothing: float) -> list[float]:
    """Bias-corrected EMA of a whole sequence (see :class:`BiasCorrectedEMA`)."""
    ema = BiasCorrectedEMA(smoothing)
    return [ema.update(float(v)) for v in values]


def _noise_space(values: Sequence[float]) -> tuple[list[float], Callable[[float], float]]:
    """The log of the values when all are > 0 (multiplicative noise becomes additive), else the values over
    their median magnitude. Returns the transformed values and the inverse transform."""
    vals = [float(v) for v in values]
    if vals and min(vals) > 0:
        return [math.log(v) for v in vals], math.exp
    mags = sorted(abs(v) for v in vals)
    scale = mags[len(mags) // 2] if mags and mags[len(mags) // 2] > 0 else 1.0
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
    z, _ = _noise_space(values)
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
    z, back = _noise_space(values)
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


@dataclass(frozen=True)
class Suggestion:
    """Both bounds read off a curve by one rule.

    ``fallback`` is True when the rule could not apply; ``reason`` then says what happened and which
    bounds were used. ``points`` holds the named LRs the rule looked at (for plots and comparisons).
    """

    rule: str
    base_lr: float
    max_lr: float
    fallback: bool = False
    reason: str = ""
    points: dict[str, float] = field(default_factory=dict)


def _finite_prefix(lrs: Sequence[float], curve: Sequence[float]) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for lr, y in zip(lrs, curve):
        if y is None or not math.isfinite(y) or not math.isfinite(lr) or lr <= 0:
            break
        xs.append(math.log(lr))
        ys.append(float(y))
    return xs, ys


def _crossing(xs: list[float], ys: list[float], level: float, stop: int) -> float:
    """First log-LR (linearly interpolated) at which ``ys`` falls to ``level``, searching ``[0, stop]``."""
    for i in range(stop + 1):
        if ys[i] <= level:
            if i == 0 or ys[i - 1] == ys[i]:
                return xs[i]
            t = (ys[i - 1] - level) / (ys[i - 1] - ys[i])
            return xs[i - 1] + t * (xs[i] - xs[i - 1])
    return xs[stop]


def _valley_index(ys: list[float]) -> tuple[int, int, int]:
    """fastai's ``valley``: the longest decreasing run (not necessarily contiguous), and the point
    halfway along it (a third plus a sixth). Returns (start, end, chosen index)."""
    n = len(ys)
    lds = [1] * n
    max_end = 0
    for i in range(1, n):
        for j in range(i):
            if ys[i] < ys[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
    max_start = max_end - lds[max_end] + 1
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return max_start, max_end, min(max(idx, 0), n - 1)


def _steepest_index(xs: list[float], ys: list[float], stop: int) -> int:
    """Index of the most negative slope d(curve)/d(log lr) in ``[0, stop]`` (central differences)."""
    best, best_slope = 0, math.inf
    n = len(xs)
    for i in range(stop + 1):
        lo, hi = max(i - 1, 0), min(i + 1, n - 1)
        if hi == lo or xs[hi] == xs[lo]:
            continue
        slope = (ys[hi] - ys[lo]) / (xs[hi] - xs[lo])
        if slope < best_slope:
            best, best_slope = i, slope
    return best


def _first_instability(ys: list[float], raw: Sequence[float], start: float, flat: float, sigma: float) -> Optional[int]:
    """Index of the first raw loss above ``INSTABILITY_FACTOR`` x the best smoothed loss so far, once the
    smoothed curve has started to fall. The smoothed curve lags the raw one by about ``1/smoothing`` points,
    so on a noisy curve its minimum can sit past the LR where single steps already blew up. On a noisy curve
    (per-point noise ``sigma`` in log units, 0 below ``NOISE_FREE``) the raw loss must exceed that by
    ``INSTABILITY_SIGMAS`` sigmas more, so that noise alone does not count as an instability."""
    factor = INSTABILITY_FACTOR * math.exp(INSTABILITY_SIGMAS * sigma)
    best = min(ys[0], start)
    for k in range(1, min(len(ys), len(raw))):
        value = raw[k]
        falling = ys[k - 1] < start - flat
        if falling and value is not None and math.isfinite(value) and value > factor * best:
            return k
        best = min(best, ys[k])
    return None


@dataclass(frozen=True)
class _Reading:
    """The curve the rules read: log-LRs ``xs``, values ``ys``, the aligned raw losses, the raw curve's noise
    ``sigma``, the smoother's ``half_width`` (0: read as given) and the noise of ``ys`` itself (log units)."""

    xs: list[float]
    ys: list[float]
    raw: Optional[list[float]]
    sigma: float
    half_width: int
    noise: float
    start: float  # the level the drop is measured from


def _clean_start(ys: list[float], raw: Optional[list[float]]) -> tuple[int, float]:
    """Where a low-noise curve's reading starts, and its start level. Normally the first point. When the
    first raw loss is an outlier (off the median of the next 5 by more than 5x their spread plus 2%), the
    start level is that median, and while an EMA anchored on a low first batch is still rising back to it,
    those leading points are skipped: its own decay (high first batch) or rise (low one) is not the curve."""
    if raw is None or len(raw) < 6 or not ys:
        return 0, ys[0] if ys else math.nan
    following = sorted(raw[1:6])
    med = following[2]
    spread = sorted(abs(v - med) for v in following)[2]
    if abs(raw[0] - med) <= 5 * spread + FLAT_TOLERANCE * abs(med):
        return 0, ys[0]
    j = 0
    while j < len(ys) - 1 and ys[j] < med - FLAT_TOLERANCE * abs(med):
        j += 1
    return j, med


def _read_curve(lrs: Sequence[float], curve: Sequence[float], raw: Optional[Sequence[float]]) -> _Reading:
    """A curve with less than ``NOISE_FREE`` per-point noise is read as given. A noisier one (tiny batches) is
    read from ``raw`` (else ``curve``) through :func:`robust_smooth`, one point of half-width per
    ``NOISE_PER_POINT`` of noise, and its first ``half_width`` points, whose windows are cut short, are
    dropped: no bound comes from a noisy start, and the start level is a median, not the first batch."""
    xs, ys = _finite_prefix(lrs, curve)
    raw_ys: Optional[list[float]] = None
    if raw is not None:
        raw_xs, raw_ys = _finite_prefix(lrs, raw)
        n = min(len(xs), len(raw_xs))
        xs, ys, raw_ys = xs[:n], ys[:n], raw_ys[:n]
    source = raw_ys if raw_ys is not None else ys
    sigma = noise_sigma(source) if len(source) >= MIN_POINTS else 0.0
    if sigma < NOISE_FREE:
        j, start = _clean_start(ys, raw_ys)
        return _Reading(xs[j:], ys[j:], raw_ys[j:] if raw_ys is not None else None, sigma, 0, 0.0, start)
    h = min(MAX_HALF_WIDTH, math.ceil(sigma / NOISE_PER_POINT))
    smoothed = robust_smooth(source, h)
    noise = 1.25 * sigma / math.sqrt(2 * h + 1)  # a median of 2h+1 points has about 1.25x the mean's error
    ys = smoothed[h:]
    return _Reading(xs[h:], ys, raw_ys[h:] if raw_ys is not None else None, sigma, h, noise, ys[0] if ys else math.nan)


def _within_noise(start: float, low: float, noise: float) -> bool:
    """Whether the drop from the start to the minimum is within ``NOISE_SIGMAS`` of the curve's own noise."""
    if noise <= 0:
        return False
    z, _ = _noise_space([start, low])
    return z[0] - z[1] <= NOISE_SIGMAS * noise


def _max_lr(
    rule: str, xs: list[float], ys: list[float], start: float, i_min: int, points: dict[str, float], gap: float
) -> float:
    drop = start - ys[i_min]
    lr_at_min = math.exp(xs[i_min])
    if rule == "smith":
        points["start_lr"] = math.exp(_crossing(xs, ys, start - 0.1 * drop, i_min))
        high = math.exp(_crossing(xs, ys, ys[i_min] + 0.1 * drop, i_min))
    elif rule == "valley":
        start, end, idx = _valley_index(ys)
        points["valley_start_lr"], points["valley_end_lr"] = math.exp(xs[start]), math.exp(xs[end])
        high = math.exp(xs[idx])
    elif rule == "steepest":
        high = math.exp(xs[_steepest_index(xs, ys, i_min)])
    else:  # minimum
        high = lr_at_min / MINIMUM_DIVISOR
    return min(high, lr_at_min / gap)


def suggest(
    lrs: Sequence[float],
    curve: Sequence[float],
    rule: str = "smith",
    *,
    fallback_max_lr: float,
    diverged_at: Optional[float] = None,
    base_divisor: float = DEFAULT_BASE_DIVISOR,
    raw: Optional[Sequence[float]] = None,
) -> Suggestion:
    """Read ``base_lr`` and ``max_lr`` off a (smoothed) curve, lower is better, in log-LR space.

    Rules (every one sets ``base_lr = max_lr / base_divisor``, Smith's advice of /3 to /4, and keeps
    ``max_lr`` at least ``DIVERGENCE_GAP`` = 3x below the LR of the curve's minimum):

    - ``"smith"``: ``max_lr`` where the curve *stops falling*: the first LR at which 90% of the drop
      from the first point to the minimum is done (interpolated in log-LR). The LR where it *starts
      to fall* (10% of the drop) is reported in ``points["start_lr"]``.
    - ``"valley"``: fastai's rule: halfway along the longest descending stretch of the curve.
    - ``"steepest"``: the steepest descent of the curve against log-LR.
    - ``"minimum"``: a tenth of the LR at the curve's minimum (measured on Fashion-MNIST: the minimum
      itself diverged, a tenth of it trained well).

    With ``raw`` (the unsmoothed losses), "the curve's minimum" above is the earlier of the smoothed
    minimum and the first instability: the first raw loss above ``INSTABILITY_FACTOR`` (1.3) x the best
    smoothed loss so far. The EMA lags by about ``1/smoothing`` points, and on a noisy curve (digits) its
    minimum sat past LRs where single steps had already blown up; training at a third of it diverged.

    **Noisy curves** (per-point noise :func:`noise_sigma` of ``NOISE_FREE`` = 5% or more, as with batches of
    8 rows): the rules read a centered robust smoothing of ``raw`` instead (see ``_read_curve``), a drop
    counts only if it exceeds ``NOISE_SIGMAS`` sigmas of that smoothing's noise, and an instability must
    exceed the noise too. ``points["noise_sigma"]`` reports the noise.

    Only the finite prefix of the curve is used. Fewer than ``MIN_POINTS`` points, a curve that never
    falls, or a drop below ``FLAT_TOLERANCE`` of its start (or within the noise): ``max_lr =
    fallback_max_lr`` (for example the optimizer's LR), at most a tenth of ``diverged_at`` when given,
    with ``fallback=True``.
    """
    if rule not in RULES:
        raise ValueError(f"range test `rule` must be one of {RULES}, got {rule!r}")
    if not (base_divisor >= 1) or not math.isfinite(base_divisor):
        raise ValueError(f"`base_divisor` must be a finite number >= 1, got {base_divisor!r}")
    reading = _read_curve(lrs, curve, raw)
    xs, ys = reading.xs, reading.ys

    def fallback(what: str, points: Optional[dict[str, float]] = None) -> Suggestion:
        high = float(fallback_max_lr)
        cap = ""
        if diverged_at is not None and math.isfinite(diverged_at) and high > diverged_at / MINIMUM_DIVISOR:
            high = diverged_at / MINIMUM_DIVISOR
            cap = f", capped at a tenth of the LR where the sweep diverged ({diverged_at:.3g})"
        base = high / base_divisor
        reason = (
            f"{what}; the {rule!r} rule cannot read the bounds, falling back to max_lr={high:.4g}"
            f" (the optimizer's LR{cap}) and base_lr={base:.4g} (max_lr / {base_divisor:g})"
        )
        return Suggestion(rule, base, high, True, reason, dict(points or {}))

    n = len(ys)
    if n < MIN_POINTS:
        return fallback(f"the curve has only {n} finite point(s), fewer than {MIN_POINTS}")
    i_min = min(range(n), key=lambda i: ys[i])
    start = reading.start
    drop = start - ys[i_min]
    points = {"min_point_lr": math.exp(xs[i_min])}
    if reading.half_width:
        points["noise_sigma"] = reading.sigma
    if i_min == 0 or drop <= 0:
        return fallback("the curve never fell below its first point (is min_lr already too high?)", points)
    scale = max(abs(start), abs(ys[i_min]), 1e-12)
    if drop <= FLAT_TOLERANCE * scale:
        return fallback(
            f"the curve is flat (it fell by {drop:.3g}, less than {FLAT_TOLERANCE:.0%} of {scale:.3g})", points
        )
    if _within_noise(start, ys[i_min], reading.noise):
        return fallback(
            f"the curve's drop ({drop:.3g}) is within {NOISE_SIGMAS:g} sigmas of its per-batch noise"
            f" (sigma {reading.sigma:.2f} in log units)",
            points,
        )
    if reading.raw is not None:
        noise = reading.sigma if reading.half_width else 0.0  # below NOISE_FREE, 1.3x is already > 5 sigmas
        k = _first_instability(ys, reading.raw, start, FLAT_TOLERANCE * scale, noise)
        if k is not None:
            points["instability_lr"] = math.exp(xs[k])
            i_min = min(i_min, k)
    gap = NOISY_DIVERGENCE_GAP if reading.half_width else DIVERGENCE_GAP
    high = _max_lr(rule, xs, ys, start, i_min, points, gap)
    return Suggestion(rule, high / base_divisor, high, False, "", points)


def suggest_all(
    lrs: Sequence[float],
    curve: Sequence[float],
    *,
    fallback_max_lr: float,
    diverged_at: Optional[float] = None,
    base_divisor: float = DEFAULT_BASE_DIVISOR,
    raw: Optional[Sequence[float]] = None,
) -> dict[str, Suggestion]:
    """Every rule's suggestion on the same curve, to compare rules.

    Example:
        >>> lrs = sweep_lrs(1e-4, 1.0, 40)
        >>> sorted(suggest_all(lrs, [1.0] * 40, fallback_max_lr=0.1))
        ['minimum', 'smith', 'steepest', 'valley']
    """
    return {
        rule: suggest(
            lrs,
            curve,
            rule,
            fallback_max_lr=fallback_max_lr,
            diverged_at=diverged_at,
            base_divisor=base_divisor,
            raw=raw,
        )
        for rule in RULES
    }
