"""The divergence guard's settings and its decision rule: pure, torch-free and Lightning-free.

:class:`DivergenceGuard` is what the user sets. :class:`DivergenceRule` judges one window of training losses at
a time (the losses of ``check_every`` optimizer steps, read once per check): a non-finite loss, or a window whose
robust level rose far above the best level so far, is a divergence. "Far" is read the way the range test reads
its curve (``range_test/_reading.py``): levels are medians in log space (in units of the first window's median
magnitude when a loss is <= 0), the band is at least ``threshold`` x the best level and at least
``NOISE_SIGMAS`` sigmas of the per-batch noise (:func:`noise_sigma`) of the last window that passed (not of the
window judged: a blow-up's accelerating losses would read as noise), and the level must also have
risen back by ``RISE_BACK`` (half) of the drop from the fit's first window to the best one (in loss units, as
``_reading.bottom_end`` measures it), so that a loss near zero late in training may rise tenfold at the cycle's
peak without counting as a divergence, while a collapse to chance (back near the first loss) or a blow-up does.

Example:
    >>> rule = DivergenceRule(threshold=4.0)
    >>> [rule.check(w) for w in ([2.3, 2.2, 2.1], [0.5, 0.4, 0.45], [0.1, 0.12, 0.09])]
    [None, None, None]
    >>> rule.check([2.2, 2.4, 2.3])
    'the training loss rose from 0.1 to 2.3 (median of 3 steps; band x4, drop 2.2 -> 0.1)'
    >>> rule.check([0.1, float("nan")])
    'a non-finite training loss (nan)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from lightning_clr._validation import ArgumentError, boolean, float_in, int_in
from lightning_clr.range_test._reading import INSTABILITY_FACTOR, INSTABILITY_SIGMAS, NOISE_SIGMAS, RISE_BACK
from lightning_clr.range_test._smoothing import TINY as _TINY
from lightning_clr.range_test._smoothing import noise_sigma, noise_sigma_of

__all__ = ["DivergenceGuard", "DivergenceRule"]

MEDIAN_ERROR = 1.25  # a median's standard error is ~1.25 x a mean's (as in _reading.read_curve)


@dataclass(frozen=True)
class DivergenceGuard:
    """Settings of the divergence guard of :class:`~lightning_clr.CyclicLearningRate`, validated on construction.

    Every error is an :class:`~lightning_clr.ArgumentError` naming ``guard.<field>`` and the value.

    Args:
        enabled: ``None`` (the default): on when a bound came from the range test, off when both were given.
            ``True``/``False``: on/off whatever the bounds.
        check_every: Read the recent training losses once every this many optimizer steps (one host read, and
            under DDP one all-reduce, per check; nothing on the steps between). A check also runs at each
            cycle trough, where the guard keeps its last good state.
        threshold: A window's median loss must exceed this many times the best window's (> 1), besides the
            noise band and the rise back towards the first window's loss, to count as a divergence.
        backoff_factor: On a divergence both bounds of every param group are multiplied by this, in (0, 1).
        max_backoffs: Back-offs allowed per fit; the next divergence restores the last good state and stops
            the fit with a :class:`~lightning_clr.DivergenceError`. 0: stop at the first divergence.
        snapshot_on_cpu: Keep the last good state (one copy of the model's parameters and buffers and of the
            optimizer state) in CPU memory instead of the device's.

    Example:
        >>> DivergenceGuard(check_every=20, backoff_factor=0.3).max_backoffs
        3
        >>> DivergenceGuard(backoff_factor=1.5)
        Traceback (most recent call last):
        ...
        lightning_clr._validation.ArgumentError: `guard.backoff_factor` must be a number in (0, 1), got 1.5
    """

    enabled: Optional[bool] = None
    check_every: int = 10
    threshold: float = 4.0
    backoff_factor: float = 0.5
    max_backoffs: int = 3
    snapshot_on_cpu: bool = False

    def __post_init__(self) -> None:
        put = object.__setattr__
        if self.enabled is not None:
            put(self, "enabled", boolean("guard.enabled", self.enabled))
        put(self, "check_every", int_in("guard.check_every", self.check_every, 1, 100_000))
        put(self, "threshold", float_in("guard.threshold", self.threshold, 1.0, math.inf, low_open=True,
                                        high_open=True))
        put(self, "backoff_factor", float_in("guard.backoff_factor", self.backoff_factor, 0.0, 1.0, low_open=True,
                                             high_open=True))
        put(self, "max_backoffs", int_in("guard.max_backoffs", self.max_backoffs, 0, 1000))
        put(self, "snapshot_on_cpu", boolean("guard.snapshot_on_cpu", self.snapshot_on_cpu))

    def active(self, range_test_ran: bool) -> bool:
        """Whether the guard watches a fit whose bounds came (``range_test_ran``) or not from the range test."""
        return range_test_ran if self.enabled is None else self.enabled


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class DivergenceRule:
    """Judges windows of training losses; its state (levels so far) is plain numbers, saved in checkpoints.

    ``space`` is ``"log"`` when the first window's losses were all > 0, else ``"linear"`` with ``scale`` its
    median magnitude; ``start`` is the first window's level and ``best`` the lowest level of a window that
    passed, both in that space; ``sigma`` is the per-batch noise of the last window that passed.
    """

    def __init__(self, threshold: float = 4.0) -> None:
        self.threshold = float(threshold)
        self.space: Optional[str] = None
        self.scale = 1.0
        self.start: Optional[float] = None
        self.best: Optional[float] = None
        self.sigma = 0.0
        self.calm = True  # the last window passed and ended calm: its state is safe to keep

    def _z(self, value: float) -> float:
        return math.log(max(value, _TINY)) if self.space == "log" else value / self.scale

    def _back(self, z: float) -> float:
        return math.exp(z) if self.space == "log" else z * self.scale

    def check(self, values: list[float]) -> Optional[str]:
        """Take the next window of losses; return why it diverged, or ``None`` (the window passed)."""
        self.calm = False  # set True below when the window passed and its last loss is no instability
        if not values:
            return None
        bad = next((v for v in values if not math.isfinite(v)), None)
        if bad is not None:
            return f"a non-finite training loss ({bad})"
        if self.space is None:
            self.space = "log" if min(values) > 0 else "linear"
            magnitude = _median([abs(v) for v in values])
            self.scale = magnitude if magnitude > _TINY else 1.0  # 0 or a denormal would make every z infinite
        zs = [math.log(max(v, _TINY)) for v in values] if self.space == "log" else [v / self.scale for v in values]
        level = _median(zs)
        # the noise in noise_space's units: the same logs when every loss is > 0 (and not clamped to _TINY)
        sigma = noise_sigma_of(zs) if self.space == "log" and min(values) > _TINY else noise_sigma(values)
        if self.start is None or self.best is None:
            self.start = self.best = level
            self.sigma = sigma
            self.calm = True
            return None
        ratio = math.log(self.threshold) if self.space == "log" else self.threshold - 1.0
        noise = NOISE_SIGMAS * MEDIAN_ERROR * self.sigma * math.sqrt(2.0 / len(values))
        band = max(ratio, noise)
        best, start = self._back(self.best), self._back(self.start)  # the drop in loss units, as _reading's
        if level - self.best > band and self._back(level) >= best + RISE_BACK * (start - best):
            return (f"the training loss rose from {self._back(self.best):.3g} to {self._back(level):.3g} (median of"
                    f" {len(values)} steps; band x{self._back(band) if self.space == 'log' else 1 + band:.3g},"
                    f" drop {self._back(self.start):.3g} -> {self._back(self.best):.3g})")
        self.calm = self._calm(values[-1])
        self.best = min(self.best, level)
        self.sigma = sigma
        return None

    def _calm(self, value: float) -> bool:
        """Whether the state after a window that passed is safe to keep: its last loss is no instability in the
        range test's sense (``_reading.first_instability``: above ``INSTABILITY_FACTOR`` x the best level, by
        ``INSTABILITY_SIGMAS`` sigmas of the noise of the windows before more). A median ignores one blown-up
        loss at a window's end, which is how a blow-up starts; the guard then keeps its older good state."""
        assert self.best is not None
        factor = math.log(INSTABILITY_FACTOR) if self.space == "log" else INSTABILITY_FACTOR - 1.0
        return self._z(value) - self.best <= factor + INSTABILITY_SIGMAS * self.sigma

    # ------------------------------------------------------------------ checkpoint state
    def state(self) -> dict[str, Any]:
        return {"space": self.space, "scale": self.scale, "start": self.start, "best": self.best, "sigma": self.sigma}

    def load(self, state: Any) -> None:
        """Restore :meth:`state`; a bad value raises an :class:`ArgumentError` naming ``guard.<key>``."""
        if not isinstance(state, dict):
            raise ArgumentError("guard", state, "a dict")
        space = state.get("space")
        if space not in (None, "log", "linear"):
            raise ArgumentError("guard.space", space, "None, 'log' or 'linear'")
        values = {}
        for key in ("scale", "start", "best", "sigma"):
            value = state.get(key)
            if key in ("start", "best") and value is None:
                values[key] = None
                continue
            values[key] = float_in(f"guard.{key}", value, -math.inf, math.inf, low_open=True, high_open=True)
        if (values["start"] is None) != (values["best"] is None) or (space is None) != (values["start"] is None):
            raise ArgumentError("guard", state, "consistent: space, start and best all set or all None")
        if values["sigma"] < 0:
            raise ArgumentError("guard.sigma", values["sigma"], "a number >= 0")
        self.space, self.scale, self.start, self.best = space, values["scale"], values["start"], values["best"]
        self.sigma = values["sigma"]
