"""What one trial of :func:`lightning_clr.tune_cycle_length` trains with: the frozen, typed :class:`TrialPlan`.

Global rank 0 builds it from the Optuna trial and the study's bounds; it travels to every rank as it is
(``trainer.strategy.broadcast``) and becomes the trial's :class:`~lightning_clr.CycleSettings` through
:meth:`TrialPlan.settings`, which :meth:`CyclicLearningRate.apply <lightning_clr.CyclicLearningRate.apply>`
installs before the fit resolves its cycle. Plain values only: nothing in it runs code.

Every trial of a study trains the same ``epochs`` (the study's budget, hence the same optimizer steps). Its
``CyclicLearningRate`` fits the cycle to that budget as it fits any run (``fit_whole_cycles=True``): the
half-cycle is rounded so that a whole number of cycles (at least one) fills the budget, and the trial ends at a
cycle end. Torch-free and optuna-free.

Example:
    >>> plan = TrialPlan(number=0, seed=0, half_cycle_epochs=2, mode="triangular", max_lr_scale=0.5,
    ...                  base_lr=(0.01,), max_lr=(0.05,), epochs=8)
    >>> plan.max_lr_trained
    (0.03,)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from lightning_clr._validation import choice, int_in, positive_float
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO, CycleSettings, lr_bounds
from lightning_clr.schedule import MODES

__all__ = ["TrialPlan", "scaled_max_lr"]


@dataclass(frozen=True)
class TrialPlan:
    """One trial, decided by global rank 0 (internal).

    Attributes:
        number, seed: The Optuna trial's number and the seed its model is built and trained with.
        half_cycle_epochs: The suggested half-cycle in epochs (the trained one is fitted to ``epochs``).
        mode: The CLR mode.
        max_lr_scale: The multiplier of the amplitude: ``max_lr = base_lr + scale * (max_lr - base_lr)``.
        base_lr, max_lr: The study's bounds, one value or one per param group; ``None`` when each trial runs
            its own range test.
        epochs: The budget, the same for every trial of the study.
    """

    number: int
    seed: int
    half_cycle_epochs: int
    mode: str
    max_lr_scale: float
    base_lr: Optional[tuple[float, ...]]
    max_lr: Optional[tuple[float, ...]]
    epochs: int

    def __post_init__(self) -> None:
        put = object.__setattr__
        int_in("half_cycle_epochs", self.half_cycle_epochs, 1)
        int_in("epochs", self.epochs, 1)
        choice("mode", self.mode, MODES)
        put(self, "max_lr_scale", positive_float("max_lr_scale", self.max_lr_scale))
        put(self, "base_lr", lr_bounds("base_lr", self.base_lr))
        put(self, "max_lr", lr_bounds("max_lr", self.max_lr))

    @property
    def max_lr_trained(self) -> Optional[tuple[float, ...]]:
        """``max_lr`` after the multiplier, per group."""
        return scaled_max_lr(self.base_lr, self.max_lr, self.max_lr_scale)

    def settings(self, range_test: Any) -> CycleSettings:
        """The trial's ``CyclicLearningRate`` settings (the budget-fitted cycle: ``fit_whole_cycles=True``)."""
        return CycleSettings(
            base_lr=self.base_lr, max_lr=self.max_lr_trained, half_cycle_epochs=float(self.half_cycle_epochs),
            fit_whole_cycles=True, mode=self.mode, range_test=range_test,
            final_lr_ratio=DEFAULT_FINAL_LR_RATIO,  # the study's bounds stand for automatic ones: the automatic tail
        )

    def replace(self, **changes: Any) -> TrialPlan:
        return dataclasses.replace(self, **changes)


def scaled_max_lr(
    base: Optional[tuple[float, ...]], high: Optional[tuple[float, ...]], scale: float
) -> Optional[tuple[float, ...]]:
    """``base + scale * (high - base)`` per param group (one value stands for every group)."""
    if base is None or high is None or scale == 1.0:
        return high
    n = max(len(base), len(high))
    bases, highs = base * (n // len(base)), high * (n // len(high))
    return tuple(b + (h - b) * scale for b, h in zip(bases, highs))
