"""Where each optimizer's run ends, said before it starts, and the cycles of optimizers that step at their own rate.

- :func:`run_end`: the clause of the startup line that says where an optimizer's run ends and at what LR: at
  ``base_lr`` after whole cycles, mid-cycle (explicit step sizes are kept as given, as torch's ``CyclicLR`` keeps
  them), or at ``base_lr * final_lr_ratio`` after the annealing tail, which ends the run wherever the cycle is.
- :func:`measured_cycles`: in manual optimization an optimizer may step less often than once per batch (a GAN's
  generator every second batch). Its steps per epoch are measured in the first whole epoch; a derived cycle is
  then re-planned in its own steps, so that each optimizer ends at its own cycle end.

Torch-free.

Example:
    >>> from lightning_clr.engine._plan import CyclePlan
    >>> plan = CyclePlan(base_lr=(0.01,), max_lr=(0.1,), group_counts=(1,), step_size_up=48, step_size_down=48,
    ...                  total_steps=128)
    >>> run_end(plan, 0)[:71]
    ", ending mid-cycle: after the run's 128 optimizer steps the LR is 0.07,"
"""

from __future__ import annotations

import sys
from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_clr.engine._plan import CyclePlan
from lightning_clr.engine._settings import CycleSettings
from lightning_clr.schedule import derive_step_sizes

__all__ = ["measured_cycles", "run_end", "scale_totals", "warn_epoch_early_stopping"]


def run_end(plan: CyclePlan, optimizer: int) -> str:
    """The clause of the startup line saying where optimizer ``optimizer``'s run ends ("" when its length is
    unknown)."""
    up, down, _, total = plan.cycle_of(optimizer)
    if total is None:
        return ""
    length = up + down
    whole = total % length == 0
    if plan.final_lr_ratio != 1.0:
        start = max(0, total - down)
        how = "its last falling half" if whole else (
            f"its cycles of {length} steps do not fill the run's {total}, so the tail falls from the cycle's LR"
            f" {_lr_at(plan, optimizer, start)} at step {start}")
        return f", annealing to base_lr x {plan.final_lr_ratio:g} at the end (steps {start}-{total}: {how})"
    if whole:
        return f", ending at base_lr after {total // length} whole cycle(s) ({total} optimizer steps)"
    before = total - total % length
    return (
        f", ending mid-cycle: after the run's {total} optimizer steps the LR is {_lr_at(plan, optimizer, total)},"
        f" not base_lr (its cycles of {length} steps end at steps {before} and {before + length})"
    )


def _lr_at(plan: CyclePlan, optimizer: int, step: int) -> str:
    if plan.custom_scale_fn:
        return "set by the custom scale_fn"
    first = sum(plan.group_counts[:optimizer])
    rows = range(first, first + plan.group_counts[optimizer])
    schedule = plan.schedule(None, optimizer)
    values = [schedule.lr(step, plan.base_lr[k], plan.max_lr[k]) for k in rows]
    shown = [f"{v:.4g}" for v in values]
    return shown[0] if len(set(shown)) == 1 else "[" + ", ".join(shown) + "]"


def measured_cycles(plan: CyclePlan, settings: CycleSettings, measured: list[int]) -> Optional[CyclePlan]:
    """The plan with each optimizer's cycle derived from its own steps per epoch ``measured`` (in one whole
    epoch), or ``None`` when nothing changes: every optimizer stepped ``plan.steps_per_epoch`` times, or the step
    sizes were given (in each optimizer's own steps, as torch's ``CyclicLR`` counts them), or the epoch's length
    is unknown. The run's length in each optimizer's steps is the plan's, scaled by its rate."""
    per_epoch, total = plan.steps_per_epoch, plan.total_steps
    if plan.half_cycle_epochs is None or per_epoch is None or plan.optimizer_cycles is not None:
        return None
    if all(m in (0, per_epoch) for m in measured):  # 0: an optimizer that did not step cannot be measured
        return None
    rows = []
    for m in measured:
        if m in (0, per_epoch):
            rows.append((plan.step_size_up, plan.step_size_down, per_epoch, total))
            continue
        own_total = None if total is None else max(1, round(total * m / per_epoch))
        up, down = derive_step_sizes(plan.half_cycle_epochs, m, step_size_down=settings.step_size_down,
                                     total_steps=own_total if settings.fit_whole_cycles else None)
        rows.append((up, down, m, own_total))
    return plan.replace(optimizer_cycles=tuple(rows))


def scale_totals(plan: CyclePlan, total: int) -> Optional[tuple[tuple[int, int, Optional[int], Optional[int]], ...]]:
    """Per-optimizer cycles for a run whose length changed to ``total`` (plan steps): each optimizer's length
    scaled by the same factor (its step sizes are kept)."""
    if plan.optimizer_cycles is None or not plan.total_steps:
        return plan.optimizer_cycles
    factor = total / plan.total_steps
    return tuple((up, down, per_epoch, None if own is None else max(1, round(own * factor)))
                 for up, down, per_epoch, own in plan.optimizer_cycles)


def warn_epoch_early_stopping(trainer: pl.Trainer) -> None:
    """One warning per fit for an ``EarlyStopping`` (of either Lightning package) that judges every validation:
    mid-cycle, the loss rises with the LR. One whose class sets ``cycle_end_aware = True``
    (:class:`~lightning_clr.CycleEndEarlyStopping`) judges at cycle ends only."""
    classes = [pl.callbacks.EarlyStopping]
    standalone = sys.modules.get("pytorch_lightning.callbacks")
    if standalone is not None:
        classes.append(standalone.EarlyStopping)
    plain = [cb for cb in trainer.callbacks
             if isinstance(cb, tuple(classes)) and not getattr(cb, "cycle_end_aware", False)]
    if plain:
        rank_zero_warn(
            f"CyclicLearningRate: {type(plain[0]).__name__}(monitor={plain[0].monitor!r}, patience="
            f"{plain[0].patience}) judges every validation, but in the middle of a cycle the loss rises with the"
            " LR, so it stops cyclical runs in a rising half, far from the cycle end where the model is best. Use"
            " lightning_clr.CycleEndEarlyStopping (patience in cycles), which judges only at cycle ends."
        )

