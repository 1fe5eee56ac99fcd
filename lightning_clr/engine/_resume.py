"""The resume rules: the plan a resumed fit continues with, given the checkpoint's plan and the callback's
settings. Torch-free.
"""

from __future__ import annotations

from typing import Any

from lightning_clr._validation import ArgumentError
from lightning_clr.engine._plan import CyclePlan, _show
from lightning_clr.engine._settings import CycleSettings

__all__ = ["reconcile"]

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
            where = f" {plan.scale_fn_path!r}" if plan.scale_fn_path else " (a lambda or local function)"
            raise ValueError(
                f"The checkpoint's schedule uses the custom `scale_fn`{where}, but the resumed CyclicLearningRate"
                " has none. A checkpoint never imports code: pass the same function again, e.g."
                f" CyclicLearningRate(scale_fn={plan.scale_fn_path or 'my_scale_fn'!r})."
            )
        return
    if not plan.custom_scale_fn or path != plan.scale_fn_path or path is None:
        updates.update(custom_scale_fn=True, scale_fn_path=path)
        if path != plan.scale_fn_path or not plan.custom_scale_fn:
            messages.append(f"`scale_fn`: the checkpoint has {plan.scale_fn_path!r}, the callback was given"
                            f" {path or settings.scale_fn!r}; using the given function from the resumed step on")
