"""The resume rules: the plan a resumed fit continues with, given the checkpoint's plan and the callback's
settings. Torch-free.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_clr._validation import ArgumentError, short_repr
from lightning_clr.engine._plan import CyclePlan, _show, one_or_list
from lightning_clr.engine._resolve import follow_run_length
from lightning_clr.engine._settings import CycleSettings
from lightning_clr.engine._writer import check_scale_fn
from lightning_clr.range_test import refuse_sharded

__all__ = ["check_restored_shape", "reconcile", "refuse_sharded_fit", "resume_plan"]

_SCALARS = ("mode", "gamma", "scale_mode", "cycle_momentum", "base_momentum", "max_momentum", "final_lr_ratio")


def reconcile(plan: CyclePlan, settings: CycleSettings) -> tuple[CyclePlan, list[str]]:
    """The plan a resumed fit continues with, and one message per setting that changed it.

    Rules: a setting left at its default takes the checkpoint's value. A setting given explicitly that differs
    from the checkpoint takes effect from the resumed step on (the LR at step ``t`` is the new plan's value at
    ``t``), and a message names the argument and both values. A checkpoint that used a custom ``scale_fn``
    needs it passed again: its stored path is never imported.
    """
    changed = set(settings.changed_from_default())
    updates: dict[str, Any] = {}
    messages: list[str] = []

    def take(name: str, new: Any, old: Any) -> None:
        updates[name] = new
        messages.append(f"`{name}`: the checkpoint has {_show(old)}, the callback was given {_show(new)}; using"
                        f" {_show(new)} from the resumed step on")

    for name in _SCALARS:
        new, old = getattr(settings, name), getattr(plan, name)
        if name in changed and new != old:
            take(name, new, old)
    n = len(plan.base_lr)
    for name in ("base_lr", "max_lr"):
        given = getattr(settings, name)
        if given is None:
            continue
        if len(given) not in (1, n):
            raise ArgumentError(name, _show(given), f"one value or one per param group ({n})")
        values = given * n if len(given) == 1 else given
        if values != getattr(plan, name):
            take(name, values, getattr(plan, name))
    _reconcile_cycle(plan, settings, changed, take)
    _reconcile_scale_fn(plan, settings, updates, messages)
    base, high = updates.get("base_lr", plan.base_lr), updates.get("max_lr", plan.max_lr)
    bad = [i for i, (b, m) in enumerate(zip(base, high)) if m < b]
    if bad:
        name = "max_lr" if "max_lr" in updates else "base_lr"
        raise ArgumentError(
            name,
            _show(getattr(settings, name)),
            "consistent with the checkpoint's other bound on resume",
            f"base_lr={_show(base)}, max_lr={_show(high)} has max < base in param group {bad[0]}",
        )
    if plan.optimizer_cycles is not None and {"step_size_up", "step_size_down"} & set(updates):
        updates["optimizer_cycles"] = None  # a new cycle: each optimizer's own is measured again (first whole epoch)
    new_plan = plan.replace(**updates) if updates else plan
    return new_plan, messages


def _reconcile_cycle(plan: CyclePlan, settings: CycleSettings, changed: set[str], take: Any) -> None:
    up, down = settings.step_size_up, settings.step_size_down
    if up is None and "half_cycle_epochs" in changed and plan.steps_per_epoch:
        if settings.half_cycle_epochs != plan.half_cycle_epochs:
            up = max(1, round(settings.half_cycle_epochs * plan.steps_per_epoch))
            take("half_cycle_epochs", settings.half_cycle_epochs, plan.half_cycle_epochs)
    if up is not None and up != plan.step_size_up:
        take("step_size_up", up, plan.step_size_up)
    down = down if down is not None else (up if up is not None else None)
    if down is not None and down != plan.step_size_down:
        take("step_size_down", down, plan.step_size_down)


def _reconcile_scale_fn(
    plan: CyclePlan, settings: CycleSettings, updates: dict[str, Any], messages: list[str]
) -> None:
    path = settings.scale_fn_path
    if settings.scale_fn is None:
        if plan.custom_scale_fn:
            # The path is data from the checkpoint: shown (shortened) as what it says, never offered as advice.
            recorded = plan.scale_fn_path
            where = f" (recorded as {short_repr(recorded)})" if recorded else " (a lambda or local function)"
            raise ValueError(
                f"The checkpoint's schedule uses a custom `scale_fn`{where}, but the resumed CyclicLearningRate"
                " has none. A checkpoint never imports code: pass the same function again as `scale_fn`."
            )
        return
    if not plan.custom_scale_fn or path != plan.scale_fn_path or path is None:
        updates.update(custom_scale_fn=True, scale_fn_path=path)
        if path != plan.scale_fn_path or not plan.custom_scale_fn:
            messages.append(f"`scale_fn`: the checkpoint has {short_repr(plan.scale_fn_path)}, the callback was given"
                            f" {path or settings.scale_fn!r}; using the given function from the resumed step on")


def check_restored_shape(restored: tuple[CyclePlan, list[int]], counts: tuple[int, ...]) -> None:
    """Refuse a checkpoint's plan whose param-group layout is not the model's optimizers' (before any step)."""
    plan, _ = restored
    if plan.group_counts != counts:
        raise ValueError(
            f"The checkpoint's CyclicLearningRate plan covers param groups {list(plan.group_counts)} (per optimizer),"
            f" but the model's optimizer(s) have {list(counts)}. Resume with the same `configure_optimizers`."
        )


def resume_plan(plan: CyclePlan, steps: list[int], settings: CycleSettings, trainer: Any) -> CyclePlan:
    """The plan a resumed fit continues with (the resume rules, the run length's tail, a custom ``scale_fn``
    checked), with one warning per change and one info line."""
    plan, messages = reconcile(plan, settings)
    plan, moved = follow_run_length(plan, trainer)
    messages += [moved] if moved else []
    if settings.scale_fn is not None:
        check_scale_fn(settings.scale_fn, plan.scale_mode, plan.cycle_length, plan.total_steps)
    for message in messages:
        rank_zero_warn(f"CyclicLearningRate on resume: {message}.")
    rank_zero_info(f"CyclicLearningRate: resumed at step {steps} with the checkpoint's plan; the range test does not"
                   " run again.")
    return plan


def refuse_sharded_fit(settings: CycleSettings, strategy: Any) -> None:
    """Before the model is sharded: the range test snapshots the full parameters on every rank."""
    try:
        refuse_sharded(strategy)
    except ValueError as err:
        raise ValueError(
            f"CyclicLearningRate(base_lr={one_or_list(settings.base_lr)!r}, max_lr={one_or_list(settings.max_lr)!r})"
            f" leaves a bound to the range test. {err}"
        ) from None
