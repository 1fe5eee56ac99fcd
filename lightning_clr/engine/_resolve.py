"""From settings to a plan at fit start: the cycle length from the run's length, the bounds from the user or the
range test, with every param group's ratio kept. Data flows one way: settings -> range test -> plan.

Example:
    >>> expand_bounds("base_lr", (0.1,), 3)
    (0.1, 0.1, 0.1)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer

from lightning_clr import range_test
from lightning_clr._validation import ArgumentError
from lightning_clr.engine._ending import run_end, scale_totals
from lightning_clr.engine._plan import CyclePlan
from lightning_clr.engine._settings import CycleSettings
from lightning_clr.schedule import derive_step_sizes, whole_cycles

__all__ = ["STREAM_CYCLES", "Cycle", "build_plan", "describe", "expand_bounds", "follow_run_length", "resolve_bounds",
           "resolve_cycle"]

STREAM_CYCLES = 3  # cycles that fill a `max_steps` run whose dataloader has no length (Smith: at least 3)


class Cycle(NamedTuple):
    """The cycle length (and the annealing tail) of a fit, resolved before the range test."""

    step_size_up: int
    step_size_down: int
    steps_per_epoch: Optional[int]  # None: the train dataloader has no length
    total_steps: Optional[int]  # None: unknown or unbounded
    half_cycle_epochs: Optional[float]  # what the step sizes were derived from; None when given
    final_lr_ratio: float = 1.0  # the tail's end (1: none); see resolve_cycle


def expand_bounds(name: str, values: tuple[float, ...], n_groups: int) -> tuple[float, ...]:
    """One value for every param group, or one per group; anything else names ``name`` and the group count."""
    if len(values) == 1:
        return values * n_groups
    if len(values) != n_groups:
        shown = list(values)
        raise ArgumentError(name, shown, f"one value or one per param group: the optimizer(s) have {n_groups}")
    return values


def _steps_per_epoch(trainer: pl.Trainer) -> Optional[int]:
    batches = trainer.num_training_batches
    if batches == float("inf") or not batches or batches <= 0:
        return None
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


def _total_steps(trainer: pl.Trainer, start: int = 0) -> Optional[int]:
    """The run's optimizer steps from global step ``start`` on (``None``: unknown, unbounded or none left)."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - Lightning raises for some infinite setups; then the length is unknown
        return None
    return int(total) - start if math.isfinite(total) and total > start else None


def resolve_cycle(settings: CycleSettings, trainer: pl.Trainer, start: int = 0) -> Cycle:
    """The cycle length of this fit, and its annealing tail, over the run's steps from global step ``start`` on
    (0, or the step of a resumed run the callback joins without a state of its own).

    Called before the range test, so that a run whose cycle cannot be derived fails before any sweep step.
    """
    cycle = _cycle_length(settings, trainer, start)
    if start > 0:
        remaining = f"its remaining {cycle.total_steps}" if cycle.total_steps else "the"
        rank_zero_info(f"CyclicLearningRate: the checkpoint has no CyclicLearningRate state; the cycle starts at"
                       f" the resumed step {start} and is planned over {remaining} optimizer steps.")
    return cycle._replace(final_lr_ratio=_final_lr_ratio(settings, cycle.total_steps))


def _final_lr_ratio(settings: CycleSettings, total: Optional[int]) -> float:
    """The tail ends at the run's last step: without a known length the default tail is left out, and a ratio
    the user set is refused. ``final_lr_ratio=None`` is automatic (:attr:`CycleSettings.automatic_final_lr_ratio`)."""
    ratio = settings.automatic_final_lr_ratio
    if ratio == 1.0 or total is not None:
        return ratio
    if settings.final_lr_ratio is not None:
        raise ArgumentError("final_lr_ratio", ratio, "1.0 when the run's length is unknown",
                            "the annealing tail ends at the run's last step: set max_epochs or max_steps")
    rank_zero_info(
        f"CyclicLearningRate: the run's length is unknown (no max_epochs or max_steps), so it ends without the"
        f" default annealing tail (final_lr_ratio={ratio:g})."
    )
    return 1.0


def follow_run_length(plan: CyclePlan, trainer: pl.Trainer) -> tuple[CyclePlan, Optional[str]]:
    """On resume, the annealing tail ends at this fit's last step: a run made longer (or shorter) than the
    checkpoint's moves it there, with a message. A preempted job resumed with the same length keeps its plan."""
    total = _total_steps(trainer, plan.start_step)
    if plan.final_lr_ratio == 1.0 or total is None or total == plan.total_steps:
        return plan, None
    return plan.replace(total_steps=total, optimizer_cycles=scale_totals(plan, total)), (
        f"the run's length changed from {plan.total_steps} to {total} optimizer steps: the annealing tail"
        f" (final_lr_ratio={plan.final_lr_ratio:g}) now ends at step {total}"
    )


def _cycle_length(settings: CycleSettings, trainer: pl.Trainer, start: int) -> Cycle:
    per_epoch = _steps_per_epoch(trainer)
    total = _total_steps(trainer, start)
    if settings.step_size_up is not None:
        up = settings.step_size_up
        return Cycle(up, settings.step_size_down or up, per_epoch, total, None)
    if per_epoch is not None:
        up, down = derive_step_sizes(
            settings.half_cycle_epochs,
            per_epoch,
            total_steps=total if settings.fit_whole_cycles else None,
            step_size_down=settings.step_size_down,
        )
        return Cycle(up, down, per_epoch, total, settings.half_cycle_epochs)
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps > start:
        up, down = whole_cycles(max_steps - start, STREAM_CYCLES)
        if settings.step_size_down is not None:
            down = settings.step_size_down
        return Cycle(up, down, None, max_steps - start, None)
    raise ArgumentError(
        "step_size_up",
        None,
        "given (in optimizer steps) when the train dataloader has no length",
        "an IterableDataset has no epoch length to derive the cycle from, and Trainer(max_steps) is not set:"
        " pass CyclicLearningRate(step_size_up=...) or Trainer(max_steps=...)",
    )


def resolve_bounds(
    settings: CycleSettings,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    optimizers: list[Optimizer],
    start: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...], Any]:
    """``(base_lr, max_lr, range_test_result)``, one bound per param group across ``optimizers``.

    Given bounds are used as given (one value for every group, or one per group). A missing bound comes from the
    range test, which sweeps one multiplier over the groups' configured LRs, so every group keeps its ratio to
    the others; with one bound given per group, the other is that bound times the test's ratio, so the given
    bounds keep their ratios too. ``fast_dev_run`` skips the test: max_lr = each group's LR. So does a run
    resumed at global step ``start`` > 0 that the callback joins (trained weights are not swept) unless
    ``range_test.on_resume``.
    """
    n = sum(len(opt.param_groups) for opt in optimizers)
    base = expand_bounds("base_lr", settings.base_lr, n) if settings.base_lr is not None else None
    high = expand_bounds("max_lr", settings.max_lr, n) if settings.max_lr is not None else None
    if base is not None and high is not None:
        return base, high, None
    divisor = settings.range_test.base_divisor
    if trainer.fast_dev_run:
        return (*_fallback(base, high, optimizers, divisor, "`fast_dev_run` skips the range test"), None)
    if start > 0 and not settings.range_test.on_resume:
        why = (f"the run resumed at step {start} without a CyclicLearningRate state, and the range test does not"
               " sweep trained weights unless asked (RangeTestConfig(on_resume=True))")
        return (*_fallback(base, high, optimizers, divisor, why), None)
    if len(optimizers) > 1:
        raise ValueError(
            f"The range test needs a single optimizer, found {len(optimizers)}: give `base_lr` and"
            " `max_lr` explicitly to CyclicLearningRate."
        )
    result = range_test.run_range_test(trainer, pl_module, settings.range_test)
    found_base, found_max = _group_bounds(result, n)
    ref = max(range(n), key=lambda k: found_max[k])  # the group the sweep's LRs are quoted for
    if base is None and high is None:
        base, high = found_base, found_max
    elif high is None:
        ratio = found_max[ref] / base[ref]
        if ratio < 1:
            rank_zero_warn(
                f"CyclicLearningRate: the range test's max_lr {found_max[ref]:.3g} is below the given base_lr"
                f" {_fmt(base)}; using max_lr = {divisor:g} x base_lr."
            )
            ratio = divisor
        high = tuple(b * ratio for b in base)
    else:
        ratio = found_base[ref] / high[ref]
        if ratio > 1:
            rank_zero_warn(
                f"CyclicLearningRate: the range test's base_lr {found_base[ref]:.3g} is above the given max_lr"
                f" {_fmt(high)}; using base_lr = max_lr / {divisor:g}."
            )
            ratio = 1 / divisor
        base = tuple(h * ratio for h in high)
    rank_zero_info(
        f"CyclicLearningRate: range test chose base_lr={_fmt(base)}, max_lr={_fmt(high)} ({result.rule!r} rule)."
    )
    return base, high, result


def _fallback(
    base: Optional[tuple[float, ...]], high: Optional[tuple[float, ...]], optimizers: list[Optimizer], divisor: float,
    why: str,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Bounds without a range test: max_lr = each group's current LR, base_lr = max_lr / ``divisor``."""
    current = tuple(float(g["lr"]) for opt in optimizers for g in opt.param_groups)
    high = high or (tuple(b * divisor for b in base) if base else current)
    base = base or tuple(h / divisor for h in high)
    rank_zero_info(
        f"CyclicLearningRate: {why}; using fallback bounds base_lr={_fmt(base)}, max_lr={_fmt(high)}"
        f" (max_lr = the optimizer's LR, base_lr = max_lr / {divisor:g})."
    )
    return base, high


def _group_bounds(result: Any, n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    group_bounds = getattr(result, "group_bounds", None)
    if callable(group_bounds):
        base, high = group_bounds()
        if len(base) == n:
            return tuple(float(b) for b in base), tuple(float(h) for h in high)
    return (float(result.base_lr),) * n, (float(result.max_lr),) * n


def build_plan(
    settings: CycleSettings,
    cycle: Cycle,
    bounds: tuple[tuple[float, ...], tuple[float, ...], Any],
    optimizers: list[Optimizer],
    start: int = 0,
) -> CyclePlan:
    up, down, per_epoch, total, half, final = cycle
    base, high, result = bounds
    return CyclePlan(
        base_lr=base,
        max_lr=high,
        group_counts=tuple(len(opt.param_groups) for opt in optimizers),
        step_size_up=up,
        step_size_down=down,
        mode=settings.mode,
        gamma=settings.gamma,
        scale_mode=settings.scale_mode,
        scale_fn_path=settings.scale_fn_path,
        custom_scale_fn=settings.scale_fn is not None,
        cycle_momentum=settings.cycle_momentum,
        base_momentum=settings.base_momentum,
        max_momentum=settings.max_momentum,
        final_lr_ratio=final,
        steps_per_epoch=per_epoch,
        total_steps=total,
        half_cycle_epochs=half,
        range_test=result.to_dict() if result is not None else None,
        start_step=start,
    )


def describe(plan: CyclePlan) -> str:
    """One line about the resolved cycle and where the run ends, for the info log; one part per optimizer when
    they step at different rates."""
    head = (f"CyclicLearningRate: base_lr={_fmt(plan.effective_base_lr)}, max_lr={_fmt(plan.effective_max_lr)}"
            + (f" (x{plan.lr_scale:g} after {len(plan.interventions)} back-off(s) of the guard)" if plan.interventions
               else "") + f", mode={plan.mode!r}")
    if plan.optimizer_cycles is None:
        return f"{head}, {_cycle_text(plan, 0)}."
    parts = [f"optimizer {i}: {_cycle_text(plan, i)}" for i in range(len(plan.group_counts))]
    return f"{head}; each optimizer in its own steps: " + "; ".join(parts) + "."


def _cycle_text(plan: CyclePlan, optimizer: int) -> str:
    up, down, per_epoch, _ = plan.cycle_of(optimizer)
    epochs = f" ({up / per_epoch:.3g} epochs of {per_epoch} steps per rank)" if per_epoch else ""
    return f"step_size_up={up}, step_size_down={down} optimizer steps{epochs}" + run_end(plan, optimizer)


def _fmt(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        if len(set(values)) == 1:
            return f"{values[0]:.4g}"
        return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
    return f"{values:.4g}"
