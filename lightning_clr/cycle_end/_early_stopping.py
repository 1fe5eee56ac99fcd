"""``CycleEndEarlyStopping``: Lightning's ``EarlyStopping`` that judges only at the CLR's cycle ends."""

from __future__ import annotations

from typing import Literal, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from typing_extensions import override

from lightning_clr._validation import ArgumentError, boolean, choice, finite_float, int_in
from lightning_clr.cycle_end._clock import CycleEndClock, CycleEndHooks, Moment

__all__ = ["CycleEndEarlyStopping"]


class CycleEndEarlyStopping(CycleEndHooks, EarlyStopping):
    """Stop a fit when ``monitor`` stopped improving, judged only at the cycle ends of
    :class:`~lightning_clr.CyclicLearningRate`.

    In the middle of a cycle the validation loss rises with the LR, so Lightning's ``EarlyStopping``, which
    judges every validation, stops a cyclical run in its first rising half. This one compares the metric at
    cycle ends only, where the LR is back at ``base_lr``, so ``patience`` counts cycles and a stopped fit
    ends at a cycle end. It judges at the same moments as :class:`~lightning_clr.CycleEndCheckpoint`: the first
    validation at or after each cycle end (in a fit without validation, the optimizer step that ends it).

    Args:
        monitor: Logged metric to watch.
        min_delta: Smallest change (>= 0) that counts as an improvement.
        patience: Cycle ends without improvement after which the fit stops (1: stop at the first cycle end
            that is not better than the best one before it).
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        strict: Raise if ``monitor`` was not logged at a cycle end (else skip that cycle end).
        check_finite: Stop at a cycle end whose metric is NaN or infinite.
        stopping_threshold: Stop at the first cycle end whose metric is better than this.
        divergence_threshold: Stop at the first cycle end whose metric is worse than this.
        verbose: Log each judgement.

    Attributes:
        stopped_cycle: The cycle (from 1) at whose end the fit was stopped, or ``None``.
        stopped_step: The optimizer step (first optimizer's) of that judgement, or ``None``.
        cycles_judged: Cycle ends judged in this fit, resumed ones included.

    Its state (the best value, the cycles waited, the cycle ends judged) is saved in checkpoints, so a resumed
    fit goes on counting where it left off.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_clr import CycleEndEarlyStopping, CyclicLearningRate
        >>> stop = CycleEndEarlyStopping(monitor="val_loss", patience=1)
        >>> trainer = pl.Trainer(callbacks=[CyclicLearningRate(), stop], logger=False)
    """

    cycle_end_aware = True  # CyclicLearningRate warns about any other EarlyStopping

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 1,
        mode: Literal["min", "max"] = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: Optional[float] = None,
        divergence_threshold: Optional[float] = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ArgumentError("monitor", monitor, "the name of a logged metric")
        min_delta = finite_float("min_delta", min_delta)
        if min_delta < 0:
            raise ArgumentError("min_delta", min_delta, "a finite number >= 0")
        if stopping_threshold is not None:
            stopping_threshold = finite_float("stopping_threshold", stopping_threshold)
        if divergence_threshold is not None:
            divergence_threshold = finite_float("divergence_threshold", divergence_threshold)
        super().__init__(
            monitor=monitor, min_delta=min_delta, patience=int_in("patience", patience, 1, what="cycle ends"),
            verbose=boolean("verbose", verbose), mode=choice("mode", mode, ("min", "max")),
            strict=boolean("strict", strict), check_finite=boolean("check_finite", check_finite),
            stopping_threshold=stopping_threshold, divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=False,
        )
        self._clock = CycleEndClock("CycleEndEarlyStopping")
        self.stopped_cycle: Optional[int] = None
        self.stopped_step: Optional[int] = None

    @override
    def _on_fit_setup(self) -> None:
        self.stopped_cycle = self.stopped_step = None

    @override
    def _at(self, trainer: pl.Trainer, moment: Moment) -> None:
        if self._should_skip_check(trainer):
            return
        cycle = self._clock.due(trainer, moment)
        if cycle is None:
            return
        before = trainer.should_stop
        self._run_early_stopping_check(trainer)  # every rank at the same cycle end: its collective matches up
        if trainer.should_stop and not before:
            self.stopped_cycle, self.stopped_step = cycle, self._clock.step()
