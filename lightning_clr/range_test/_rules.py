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
from typing import Optional, Sequence

__all__ = [
    "BiasCorrectedEMA",
    "RULES",
    "Suggestion",
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


def _first_instability(ys: list[float], raw: Sequence[float], flat: float) -> Optional[int]:
    """Index of the first raw loss above ``INSTABILITY_FACTOR`` x the best smoothed loss so far, once the
    smoothed curve has started to fall. The smoothed curve lags the raw one by about ``1/smoothing`` points,
    so on a noisy curve its minimum can sit past the LR where single steps already blew up."""
    best = ys[0]
    for k in range(1, min(len(ys), len(raw))):
        value = raw[k]
        falling = ys[k - 1] < ys[0] - flat
        if falling and value is not None and math.isfinite(value) and value > INSTABILITY_FACTOR * best:
            return k
        best = min(best, ys[k])
    return None


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

    Only the finite prefix of the curve is used. Fewer than ``MIN_POINTS`` points, a curve that never
    falls, or a drop below ``FLAT_TOLERANCE`` of its start: ``max_lr = fallback_max_lr`` (for example
    the optimizer's LR), at most a tenth of ``diverged_at`` when given, with ``fallback=True``.
    """
    if rule not in RULES:
        raise ValueError(f"range test `rule` must be one of {RULES}, got {rule!r}")
    if not (base_divisor >= 1) or not math.isfinite(base_divisor):
        raise ValueError(f"`base_divisor` must be a finite number >= 1, got {base_divisor!r}")
    xs, ys = _finite_prefix(lrs, curve)

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
    drop = ys[0] - ys[i_min]
    lr_at_min = math.exp(xs[i_min])
    points = {"min_point_lr": lr_at_min}
    if i_min == 0:
        return fallback("the curve never fell below its first point (is min_lr already too high?)", points)
    scale = max(abs(ys[0]), abs(ys[i_min]), 1e-12)
    if drop <= FLAT_TOLERANCE * scale:
        return fallback(
            f"the curve is flat (it fell by {drop:.3g}, less than {FLAT_TOLERANCE:.0%} of {scale:.3g})", points
        )
    k = _first_instability(ys, raw, FLAT_TOLERANCE * scale) if raw is not None else None
    if k is not None:
        points["instability_lr"] = math.exp(xs[k])
        if k < i_min:
            i_min, lr_at_min = k, math.exp(xs[k])

    if rule == "smith":
        points["start_lr"] = math.exp(_crossing(xs, ys, ys[0] - 0.1 * drop, i_min))
        high = math.exp(_crossing(xs, ys, ys[i_min] + 0.1 * drop, i_min))
    elif rule == "valley":
        start, end, idx = _valley_index(ys)
        points["valley_start_lr"], points["valley_end_lr"] = math.exp(xs[start]), math.exp(xs[end])
        high = math.exp(xs[idx])
    elif rule == "steepest":
        high = math.exp(xs[_steepest_index(xs, ys, i_min)])
    else:  # minimum
        high = lr_at_min / MINIMUM_DIVISOR
    high = min(high, lr_at_min / DIVERGENCE_GAP)
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
