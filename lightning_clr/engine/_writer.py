"""The per-step writer: sets each param group's LR (and momentum) from a :class:`~lightning_clr.CyclePlan` and
the optimizer step counts, once per optimizer step. The values come from
:class:`~lightning_clr.schedule.CyclicSchedule`, the package's one CLR formula.

A step is counted when it happened: :meth:`ScheduleWriter.start` registers torch step hooks on each
optimizer (``Optimizer.register_step_pre_hook`` and ``register_step_post_hook``); the post-hook counts the step
and writes the next step's values. They run exactly when ``optimizer.step()`` runs: once per step under
gradient accumulation, once per ``step()`` call in manual optimization. A step that AMP's GradScaler skipped
(inf/NaN gradients) is not counted: the GradScaler does not call ``step()`` then, or, for an optimizer that
skips by itself (``fused=True``), calls it with ``optimizer.found_inf`` set, a device tensor. Reading that flag
at once would sync host and device every step, so it is read one step late (:mod:`._skips`): the step is
counted, and the next step's pre-hook takes the count back and rewrites the LR before that step runs. Each step
thus runs with the same LR as if the flag had been read at once; only the param group seen between the two
steps (``on_before_optimizer_step``, ``LearningRateMonitor``) holds one step's LR too far after a skipped
step. :attr:`ScheduleWriter.steps` reads every flag still pending, so a checkpoint saves the exact count.
A subclass whose ``step()`` calls ``super().step()`` runs torch's hooks twice per step; the pre-hook arms one
count, so it counts once. A wrapper that is not a torch optimizer (DeepSpeed's) is hooked through the torch
optimizer it wraps (``.optimizer``). :meth:`ScheduleWriter.stop` removes the hooks.

A tensor LR (``Adam(params, lr=torch.tensor(1e-3))``), and tensor betas or momentum, are written in place
(``fill_``), as torch's schedulers do: a compiled or CUDA-graph-captured ``optimizer.step()`` reads the same
tensor every step instead of baking a Python float in. A float stays a float.

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

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_clr.engine._optimizers import momentum_keys
from lightning_clr.engine._plan import CyclePlan
from lightning_clr.engine._skips import SkipFlags
from lightning_clr.schedule import interpolate

__all__ = ["ScheduleWriter", "check_scale_fn", "hookable"]

is_compiling = torch.compiler.is_compiling  # one lookup per step less; dynamo knows the function, not its name
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
        self._steps = list(steps)
        self._schedules = [plan.schedule(scale_fn, i) for i in range(len(optimizers))]  # each in its own steps
        self._check_amplitude = plan.custom_scale_fn
        self._anneals = plan.final_lr_ratio != 1.0
        self._momenta = (plan.max_momentum, plan.base_momentum)
        self._groups: list[list[tuple[dict[str, Any], float, float, Optional[str]]]] = []
        keys = momentum_keys(optimizers, plan.cycle_momentum)
        base, high = plan.effective_base_lr, plan.effective_max_lr  # lowered by the guard's back-offs, if any
        k = 0
        for opt in optimizers:
            rows = []
            for group in opt.param_groups:
                rows.append((group, base[k], high[k], keys[k]))
                k += 1
            self._groups.append(rows)
        self._handles: list[Any] = []
        self._armed = [False] * len(optimizers)
        self._flags = [SkipFlags() for _ in optimizers]  # skip flags not read yet, per optimizer

    @property
    def steps(self) -> list[int]:
        """The optimizer steps taken, one count per optimizer. Exact: it reads the skip flags still pending
        (a wait for the device, only where a fused optimizer's last step under a GradScaler is not read yet)."""
        for i, flags in enumerate(self._flags):
            if flags:
                self._take_back(i)
        return list(self._steps)

    @property
    def counted(self) -> list[int]:
        """The optimizer steps counted so far, without waiting for a skip flag still pending (a step it will take
        back is still in); for per-step readers that must not sync with the device."""
        return list(self._steps)

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
        take_back = torch.compiler.disable(self._take_back)  # runs eagerly, also inside a compiled step()
        pending = self._flags[i].pending

        def arm(optimizer: Any, args: Any, kwargs: Any) -> None:  # torch's step pre-hook signature
            self._armed[i] = True
            if pending:  # the last step's skip flag, read now that it has landed
                take_back(i)

        return arm

    def _stepped(self, i: int) -> Callable[[Any, Any, Any], None]:
        def stepped(optimizer: Any, args: Any, kwargs: Any) -> None:  # torch's step post-hook signature
            if is_compiling():  # traced into a compiled step(): a graph break, then run eagerly
                return eager(optimizer, args, kwargs)  # (traced, it would bake the count and LR into the graph)
            if not self._armed[i]:
                return  # the outer call of a nested step() (a subclass calling super().step()): counted already
            self._armed[i] = False
            found_inf = getattr(optimizer, "found_inf", None)  # set by GradScaler for a self-skipping optimizer
            if isinstance(found_inf, Tensor):
                self._flags[i].watch(found_inf)  # counted now, taken back at the next step if it was skipped
            elif found_inf is not None and found_inf:
                return  # the optimizer skipped this step (inf/NaN gradients): no step happened
            self._steps[i] += 1
            self.apply(i)

        eager = torch.compiler.disable(stepped)
        return stepped

    def _take_back(self, i: int) -> None:
        skipped = self._flags[i].skipped()
        if skipped:
            self._steps[i] -= skipped
            self.apply(i)

    def apply(self, i: int) -> None:
        """Set LR (and momentum) of optimizer ``i``'s param groups for its current step count."""
        step = self._steps[i]
        schedule = self._schedules[i]
        point = schedule.point(step)
        floor = schedule.floor(step) if self._anneals else 1.0
        if self._check_amplitude and not (0.0 <= point[1] < math.inf):
            raise ValueError(
                f"CyclicLearningRate: the custom `scale_fn` returned {point[1]!r} at step {step}; it must return a"
                " finite number >= 0"
            )
        for group, low, high, key in self._groups[i]:
            lr, current = interpolate(low * floor, high, point), group["lr"]
            if type(current) is not float and isinstance(current, Tensor):  # isinstance alone is slower
                current.fill_(lr)  # in place: a compiled or captured step reads this tensor
            else:
                group["lr"] = lr
            if key is not None:
                momentum = interpolate(*self._momenta, point)
                if key == "momentum":
                    _write(group, key, momentum)
                elif type(group["betas"][0]) is not float and isinstance(group["betas"][0], Tensor):
                    group["betas"][0].fill_(momentum)
                else:
                    group["betas"] = (momentum, *group["betas"][1:])


def _write(group: dict[str, Any], key: str, value: float) -> None:
    """A float replaces a float; a tensor is filled in place (a compiled or captured step reads that tensor)."""
    current = group[key]
    if type(current) is not float and isinstance(current, Tensor):
        current.fill_(value)
    else:
        group[key] = value


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
