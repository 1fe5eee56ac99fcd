"""When a cycle end is judged: the clock shared by :class:`~lightning_clr.CycleEndCheckpoint` and
:class:`~lightning_clr.CycleEndEarlyStopping`.

A cycle ends when the first optimizer's step count (``CyclicLearningRate.steps[0]``) reaches a multiple of the
plan's ``cycle_length``: there the LR is back at ``base_lr``. A monitored metric is known only after a
validation, so in a fit that validates, a cycle end is judged at the first validation at or after it (with
the metric and the weights of that validation); a derived cycle is a whole number of epochs, so with the
default once-per-epoch validation that validation is the cycle end itself. In a fit without validation, a
cycle end is judged right after the optimizer step that ends it. Several cycle ends before one validation
are judged once, as the latest.

Every rank counts the same steps, so every rank judges at the same moment (the collectives of checkpointing
and early stopping need that).

Example:
    >>> clock = CycleEndClock("CycleEndCheckpoint")
    >>> clock.judged  # cycle ends judged so far in this fit (the checkpoint state)
    0
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_clr._validation import int_in
from lightning_clr.callback import CyclicLearningRate

__all__ = ["CycleEndClock", "CycleEndHooks", "Moment", "find_cyclic_lr"]

Moment = Literal["step", "validation", "end"]


def find_cyclic_lr(trainer: pl.Trainer, who: str) -> CyclicLearningRate:
    """The one :class:`~lightning_clr.CyclicLearningRate` among the Trainer's callbacks; a clear error naming
    ``who`` needs it otherwise."""
    found = [c for c in trainer.callbacks if isinstance(c, CyclicLearningRate)]
    if len(found) != 1:
        raise ValueError(
            f"{who} judges at the cycle ends of a CyclicLearningRate callback and needs exactly one in the Trainer's"
            f" callbacks, found {len(found)}. Add `lightning_clr.CyclicLearningRate(...)` to `callbacks`."
        )
    return found[0]


class CycleEndClock:
    """Counts the finished cycles of a fit and says when the next one is due to be judged.

    Attributes:
        judged: Cycles finished at the last judgement (0 before the first); saved with the callback's state so
            that a resumed fit judges each cycle end once.
    """

    def __init__(self, who: str) -> None:
        self.who = who
        self.judged = 0
        self._clr: Optional[CyclicLearningRate] = None
        self._warned_lag = False

    def attach(self, trainer: pl.Trainer) -> None:
        """At setup of a fit, before any step: find the CLR callback (or raise) and start counting from 0."""
        self._clr = find_cyclic_lr(trainer, self.who)
        self.judged, self._warned_lag = 0, False

    def step(self) -> Optional[int]:
        """The first optimizer's step count under the schedule (``None`` before train start)."""
        clr = self._clr
        if clr is None or clr.plan is None or not clr.steps:
            return None
        return clr.steps[0]

    def finished(self) -> int:
        """Cycles finished so far."""
        step = self.step()
        if step is None or self._clr is None or self._clr.plan is None:
            return 0
        return step // self._clr.plan.cycle_length

    def due(self, trainer: pl.Trainer, moment: Moment) -> Optional[int]:
        """The number of the latest finished cycle (1, 2, ...) if a cycle ended since the last judgement and
        ``moment`` is when to judge it; it then counts as judged. ``None`` otherwise."""
        if trainer.sanity_checking:
            return None
        validates = bool(trainer.enable_validation)
        if (moment == "step" and validates) or (moment == "validation" and not validates):
            return None
        clr = self._clr
        if clr is None or clr.plan is None or not clr.counted_steps:
            return None
        if clr.counted_steps[0] // clr.plan.cycle_length <= self.judged:
            return None  # no cycle can have ended: decided without waiting for a skip flag (no device sync)
        cycles = self.finished()  # exact (it may wait for the last step's skip flag)
        if cycles <= self.judged:
            return None
        self.judged = cycles
        self._warn_lag(cycles)
        return cycles

    def _warn_lag(self, cycles: int) -> None:
        step = self.step()
        assert self._clr is not None and self._clr.plan is not None and step is not None
        end = cycles * self._clr.plan.cycle_length
        if step != end and not self._warned_lag:
            self._warned_lag = True
            rank_zero_warn(
                f"{self.who}: cycle {cycles} ended at optimizer step {end}, but the first validation after it ran at"
                f" step {step}; that validation's metric and weights stand for the cycle end. Validate at the cycle"
                f" ends (Trainer(val_check_interval=..., check_val_every_n_epoch=None) with a divisor of the cycle"
                f" length, {self._clr.plan.cycle_length} steps) to judge the cycle end itself."
            )

    def load(self, value: Any) -> None:
        """Restore :attr:`judged` from a checkpoint (validated: a checkpoint brings data only)."""
        try:
            self.judged = int_in("cycles_judged", value, 0)
        except ValueError as err:
            raise ValueError(f"The checkpoint's {self.who} state is invalid: {err}.") from None


class CycleEndHooks:
    """The Lightning hooks both cycle-end callbacks share, placed before their Lightning base class: the clock
    attached in ``setup``; Lightning's own triggers (every batch, every epoch end, every validation) replaced by
    :meth:`_at` with the moment; the cycles judged kept in the callback's checkpoint state.

    A subclass sets ``self._clock`` and implements ``_at(trainer, moment)``; ``_on_fit_setup`` resets its own
    per-fit state.
    """

    _clock: CycleEndClock

    @property
    def cycles_judged(self) -> int:
        """Cycle ends judged in this fit, resumed ones included."""
        return self._clock.judged

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._clock.attach(trainer)  # before anything else: no CyclicLearningRate raises here, before any step
            self._on_fit_setup()
        super().setup(trainer, pl_module, stage)  # type: ignore[misc]

    def _on_fit_setup(self) -> None:
        """Reset what one fit judged."""

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
                           ) -> None:
        self._at(trainer, "step")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # Lightning's per-epoch trigger is replaced by the cycle ends

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._at(trainer, "validation")

    def _at(self, trainer: pl.Trainer, moment: Moment) -> None:
        raise NotImplementedError

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "cycles_judged": self._clock.judged}  # type: ignore[misc]

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "cycles_judged" in state_dict:
            self._clock.load(state_dict["cycles_judged"])
        super().load_state_dict(state_dict)  # type: ignore[misc]
