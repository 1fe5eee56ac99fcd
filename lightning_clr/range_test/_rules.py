"""Pure math of the LR range test: the LR sweep and the rules that read both CLR bounds off a curve (how the
curve is read, smoothed and judged noisy is in ``_reading`` and ``_smoothing``). No Lightning and no torch here,
so every rule can be tested on synthetic curves.

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
from typing import Optional, Sequence

from lightning_clr.range_test._reading import (
    MIN_POINTS,
    NOISE_SIGMAS,
    bottom_end,
    first_instability,
    read_curve,
    small_batch_factor,
    start_level,
    within_noise,
)
from lightning_clr.range_test._smoothing import (
    BiasCorrectedEMA,
    DivergenceCheck,
    noise_sigma,
    robust_smooth,
    smooth,
)

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
FLAT_TOLERANCE = 0.02  # a total drop below 2% of the starting value counts as flat
DIVERGENCE_GAP = 3.0  # on a clean curve, max_lr is the bottom's middle this factor lower, and every rule stays
# this factor below the bottom's end (docs/evidence.md)
MINIMUM_DIVISOR = 10.0  # the "minimum" rule: a tenth of the minimum's LR (docs/evidence.md)
DEFAULT_BASE_DIVISOR = 4.0  # Smith: base_lr = max_lr / 3 .. / 4
NOISY_GAP = 1.0  # on a noisy curve (_reading.NOISE_FREE), max_lr is the bottom's middle itself: its bottom is the
# per-batch noise floor, not instability


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


def _max_lr(
    rule: str, xs: list[float], ys: list[float], start: float, i_min: int, i_end: int, points: dict[str, float],
    gap: float,
) -> float:
    """``max_lr`` by ``rule``; every rule keeps it at least ``gap`` below the LR where the bottom ends."""
    drop = start - ys[i_min]
    lr_at_min = math.exp(xs[i_min])
    if rule == "smith":
        points["start_lr"] = math.exp(_crossing(xs, ys, start - 0.1 * drop, i_min))
        stop = _crossing(xs, ys, ys[i_min] + 0.1 * drop, i_min)  # where the curve stops falling
        points["bottom_start_lr"] = math.exp(stop)
        high = math.exp(0.5 * (stop + xs[i_end])) / gap  # the bottom's middle in log-LR
    elif rule == "valley":
        first, end, idx = _valley_index(ys)
        points["valley_start_lr"], points["valley_end_lr"] = math.exp(xs[first]), math.exp(xs[end])
        high = math.exp(xs[idx])
    elif rule == "steepest":
        high = math.exp(xs[_steepest_index(xs, ys, i_min)])
    else:  # minimum
        high = lr_at_min / MINIMUM_DIVISOR
    return min(high, math.exp(xs[i_end]) / gap)


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
    """Read ``base_lr`` and ``max_lr`` off a curve, lower is better, in log-LR space.

    **The reading.** With ``raw`` (the sweep's unsmoothed losses) the rules read a centered robust smoothing of
    them (``read_curve``), which does not lag as ``curve`` (the sweep's EMA) does. Its *bottom* runs from where
    the curve stops falling (90% of its drop from the plateau before the fall is done) to where it ends: the
    first instability (a raw loss above ``INSTABILITY_FACTOR`` x the best EMA loss so far), or where the curve
    has risen back by ``RISE_BACK`` of its drop. Without ``raw`` (a metric's curve) ``curve`` is read as given.

    Rules (every one sets ``base_lr = max_lr / base_divisor``, Smith's advice of /3 to /4, and keeps ``max_lr``
    at least ``gap`` below the bottom's end):

    - ``"smith"``: the middle of the bottom in log-LR, ``gap`` lower: between where the loss stops falling and
      where it blows up, as Smith reads the curve ("where the loss slows, becomes ragged, or starts to rise").
      The LR where it *starts to fall* (10% of the drop) is reported in ``points["start_lr"]``, the bottom's
      ends in ``points["bottom_start_lr"]`` and ``points["bottom_end_lr"]``.
    - ``"valley"``: fastai's rule: halfway along the longest descending stretch of the curve.
    - ``"steepest"``: the steepest descent of the curve against log-LR.
    - ``"minimum"``: a tenth of the LR at the curve's minimum (the minimum itself can diverge).

    ``gap`` is ``DIVERGENCE_GAP`` (3) on a clean curve and ``NOISY_GAP`` (1) on a **noisy** one (per-point noise
    :func:`noise_sigma` of ``NOISE_FREE`` = 5% or more, as with batches of 8 rows of a regression): there the
    smoother is wider, a drop counts only if it exceeds ``NOISE_SIGMAS`` sigmas of the smoothing's noise, an
    instability must exceed the noise too, and the bottom is the per-batch noise floor rather than the onset of
    divergence (docs/evidence.md). ``points["noise_sigma"]`` reports the noise. On a clean curve whose noise
    is still above ``SMALL_BATCH_SIGMA`` (small batches of a classification loss), ``max_lr`` is then scaled by
    ``SMALL_BATCH_SIGMA / sigma`` (``small_batch_factor``, reported in ``points["small_batch_factor"]``): the best
    LR falls with the batch, the curve's bottom hardly does (docs/benchmarks.md, the digits_b8 task).

    Only the finite prefix of the curve is used. Fewer than ``MIN_POINTS`` points, a curve that never falls, or
    a drop below ``FLAT_TOLERANCE`` of its start (or within the noise) fall back with ``fallback=True``: to a
    tenth of ``diverged_at`` when the sweep diverged (not the optimizer's LR, which the flat curve may well show
    to be too low), else to ``fallback_max_lr`` (for example the optimizer's LR).
    """
    if rule not in RULES:
        raise ValueError(f"range test `rule` must be one of {RULES}, got {rule!r}")
    if not (base_divisor >= 1) or not math.isfinite(base_divisor):
        raise ValueError(f"`base_divisor` must be a finite number >= 1, got {base_divisor!r}")
    reading = read_curve(lrs, curve, raw)
    xs, ys = reading.xs, reading.ys

    def fallback(what: str, points: Optional[dict[str, float]] = None) -> Suggestion:
        return _fallback(rule, what, points or {}, fallback_max_lr, diverged_at, base_divisor)

    n = len(ys)
    if n < MIN_POINTS:
        return fallback(f"the curve has only {n} finite point(s), fewer than {MIN_POINTS}")
    i_min = min(range(n), key=lambda i: ys[i])
    start = start_level(ys, i_min)
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
    if within_noise(start, ys[i_min], reading.noise):
        return fallback(
            f"the curve's drop ({drop:.3g}) is within {NOISE_SIGMAS:g} sigmas of its per-batch noise"
            f" (sigma {reading.sigma:.2f} in log units)",
            points,
        )
    i_end = bottom_end(ys, i_min, drop)
    if reading.raw is not None and reading.reference is not None:
        noise = reading.sigma if reading.noisy else 0.0  # below NOISE_FREE, 1.3x is already > 5 sigmas
        k = first_instability(ys, reading.reference, reading.raw, start, FLAT_TOLERANCE * scale, noise)
        if k is not None and k <= i_end:
            points["instability_lr"] = math.exp(xs[k])
            i_min, i_end = min(i_min, k), k
    points["bottom_end_lr"] = math.exp(xs[i_end])
    gap = NOISY_GAP if reading.noisy else DIVERGENCE_GAP
    high = _max_lr(rule, xs, ys, start, i_min, i_end, points, gap)
    factor = small_batch_factor(reading.sigma)
    if factor < 1.0:
        points["small_batch_factor"] = factor
        high *= factor
    return Suggestion(rule, high / base_divisor, high, False, "", points)


def _fallback(
    rule: str,
    what: str,
    points: dict[str, float],
    fallback_max_lr: float,
    diverged_at: Optional[float],
    base_divisor: float,
) -> Suggestion:
    """The bounds when the curve cannot be read (``what`` says why): a tenth of where the sweep diverged when it
    did, else ``fallback_max_lr``."""
    high, source = float(fallback_max_lr), "the optimizer's LR"
    if diverged_at is not None and math.isfinite(diverged_at) and diverged_at > 0:
        # The sweep showed where the LR is too high; a tenth of that, not the optimizer's LR, which may be the
        # very LR the flat curve showed to be too low (docs/evidence.md).
        high = diverged_at / MINIMUM_DIVISOR
        source = f"a tenth of the LR where the sweep diverged ({diverged_at:.3g})"
    base = high / base_divisor
    reason = (
        f"{what}; the {rule!r} rule cannot read the bounds, falling back to max_lr={high:.4g}"
        f" ({source}) and base_lr={base:.4g} (max_lr / {base_divisor:g})"
    )
    return Suggestion(rule, base, high, True, reason, dict(points))


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
