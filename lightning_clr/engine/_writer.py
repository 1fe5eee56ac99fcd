"""The per-step writer: sets each param group's LR (and momentum) from a :class:`~lightning_clr.CyclePlan` and
the optimizer step counts, once per optimizer step. The values come from
:class:`~lightning_clr.schedule.CyclicSchedule`, the package's one CLR formula.

A step is counted when it happened: :meth:`ScheduleWriter.start` registers torch step hooks on each
optimizer (``Optimizer.register_step_pre_hook`` and ``register_step_post_hook``); the post-hook counts the step
and writes the next step's values. They run exactly when ``optimizer.step()`` runs: once per step under
gradient accumulation, once per ``step()`` call in manual optimization. A step that AMP's GradScaler skipped
(inf/NaN gradients) is not counted: the GradScaler does not call ``step()`` then, or, for an optimizer that
skips by itself (``fused=True``), calls it with ``optimizer.found_inf`` set. A subclass whose ``step()`` calls
``super().step()`` runs torch's hooks twice per step; the pre-hook arms one count, so it counts once. A wrapper
that is not a torch optimizer (DeepSpeed's) is hooked through the torch optimizer it wraps (``.optimizer``).
:meth:`ScheduleWriter.stop` removes the hooks.

Example:
    >>> import torch
    >>> from lightning_clr.engine._plan import CyclePlan
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> plan = CyclePlan(base_lr=(0.1,), max_lr=(0.5,), group_counts=(1,), step_size_up=2, step_size_down=2)
    >>> w = ScheduleWriter(plan, [opt], steps=[0])
    >>> w.start(); opt.param_groups[0]["lr"]
    0.1
    >>> opt.step(); round(opt.param_groups[0]["lr"], 12), w.steps
    (0.3, [1])
    >>> w.stop(); opt.step(); w.steps
    [1]
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

from torch.optim import Optimizer

from lightning_clr.engine._optimizers import momentum_keys
from lightning_clr.engine._plan import CyclePlan
from lightning_clr.schedule import interpolate

__all__ = ["ScheduleWriter", "check_scale_fn", "hookable"]

SCALE_FN_CHECKS = 100_000  # at most this many values of a custom scale_fn are checked at fit start


class ScheduleWriter:
    """Writes ``plan``'s LR into ``optimizers`` for their step counts ``steps`` (one per optimizer)."""

    def __init__(
        self,
        plan: CyclePlan,
        optimizers: list[Optimizer],
        steps: list[int],
        scale_fn: Optional[Callable[[float], float]] = None,
    ) -> None:
        self.plan = plan
        self.optimizers = optimizers
        self.steps = list(steps)
        self._schedules = [plan.schedule(scale_fn, i) for i in range(len(optimizers))]  # each in its own steps
        self._check_amplitude = plan.custom_scale_fn
        self._anneals = plan.final_lr_ratio != 1.0
        self._momenta = (plan.max_momentum, plan.base_momentum)
        self._groups: list[list[tuple[dict[str, Any], float, float, Optional[str]]]] = []
        keys = momentum_keys(optimizers, plan.cycle_momentum)
        k = 0
        for opt in optimizers:
            rows = []
            for group in opt.param_groups:
                rows.append((group, plan.base_lr[k], plan.max_lr[k], keys[k]))
                k += 1
            self._groups.append(rows)
        self._handles: list[Any] = []
        self._armed = [False] * len(optimizers)

    def start(self) -> None:
        """Write every optimizer's values for its current step count, and count its steps from now on."""
        self.stop()
        targets = [hookable(opt) for opt in self.optimizers]  # refuses an optimizer without torch's hooks first
        for i, target in enumerate(targets):
            self.apply(i)
            self._armed[i] = False
            self._handles.append(target.register_step_pre_hook(self._arm(i)))
            self._handles.append(target.register_step_post_hook(self._stepped(i)))

    def stop(self) -> None:
        """Stop counting: remove the step hooks (the values written so far stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _arm(self, i: int) -> Callable[[Any, Any, Any], None]:
        def arm(optimizer: Any, args: Any, kwargs: Any) -> None:  # torch's step pre-hook signature
            self._armed[i] = True

        return arm

    def _stepped(self, i: int) -> Callable[[Any, Any, Any], None]:
        def stepped(optimizer: Any, args: Any, kwargs: Any) -> None:  # torch's step post-hook signature
            if not self._armed[i]:
                return  # the outer call of a nested step() (a subclass calling super().step()): counted already
            self._armed[i] = False
            found_inf = getattr(optimizer, "found_inf", None)  # set by GradScaler for a self-skipping optimizer
            if found_inf is not None and bool(found_inf):
                return  # the optimizer skipped this step (inf/NaN gradients): no step happened
            self.steps[i] += 1
            self.apply(i)

        return stepped

    def apply(self, i: int) -> None:
        """Set LR (and momentum) of optimizer ``i``'s param groups for its current step count."""
        step = self.steps[i]
        schedule = self._schedules[i]
        point = schedule.point(step)
        floor = schedule.floor(step) if self._anneals else 1.0
        if self._check_amplitude and not (0.0 <= point[1] < math.inf):
            raise ValueError(
                f"CyclicLearningRate: the custom `scale_fn` returned {point[1]!r} at step {step}; it must return a"
                " finite number >= 0"
            )
        for group, low, high, key in self._groups[i]:
            group["lr"] = interpolate(low * floor, high, point)
            if key is not None:
                momentum = interpolate(*self._momenta, point)
                if key == "betas":
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum


def hookable(optimizer: Any) -> Optimizer:
    """The torch optimizer whose step hooks count ``optimizer``'s steps: itself, or the torch optimizer that a
    wrapper (DeepSpeed's ZeRO and fp16 optimizers) holds as ``.optimizer`` and steps only when its own step
    happens. Anything else is refused before any training step."""
    inner = optimizer
    for _ in range(4):
        if isinstance(inner, Optimizer):
            return inner
        inner = getattr(inner, "optimizer", None)
    raise TypeError(
        f"CyclicLearningRate: the optimizer {type(optimizer).__name__} is not a torch.optim.Optimizer and wraps none"
        " (as `.optimizer`); the callback counts optimizer steps with torch's optimizer step hooks"
    )


def check_scale_fn(
    scale_fn: Callable[[float], float], scale_mode: str, cycle_length: int, total_steps: Optional[int]
) -> None:
    """Evaluate a custom ``scale_fn`` at fit start on the values it will receive (cycle numbers or steps of the
    planned run, at most ``SCALE_FN_CHECKS`` of them); each must be a finite number >= 0."""
    total = total_steps or 10 * cycle_length
    if scale_mode == "cycle":
        inputs = range(1, min(total // cycle_length + 2, SCALE_FN_CHECKS) + 1)
    else:
        inputs = range(0, min(total + 1, SCALE_FN_CHECKS))
    for x in inputs:
        try:
            value = scale_fn(x)
        except Exception as err:
            raise ValueError(
                f"CyclicLearningRate: the custom `scale_fn` {scale_fn!r} raised {type(err).__name__}: {err} at"
                f" {x} (scale_mode={scale_mode!r})"
            ) from err
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= value < math.inf):
            raise ValueError(
                f"CyclicLearningRate: the custom `scale_fn` {scale_fn!r} returned {value!r} at {x}"
                f" (scale_mode={scale_mode!r}); it must return a finite number >= 0"
            )
