"""Cyclical learning-rate math: the value at optimizer step ``t`` is a pure function of ``t``.

This module imports neither Lightning nor torch, so it can be tested (and reused) on its own.
The formulas are exactly those of :class:`torch.optim.lr_scheduler.CyclicLR` (Smith, 2015,
arXiv:1506.01186): ``cyclic_lr(t, ...)`` equals the learning rate that ``CyclicLR`` holds after
``t`` calls of ``scheduler.step()``. Because the caller passes the step count, there is no
``last_epoch`` to keep in sync, and resuming a run only needs that count.

Example:
    >>> from lightning_clr import cyclic_lr
    >>> [round(cyclic_lr(t, base_lr=0.1, max_lr=0.5, step_size_up=2), 3) for t in range(5)]
    [0.1, 0.3, 0.5, 0.3, 0.1]
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from lightning_clr._validation import (
    MAX_STEPS,
    ArgumentError,
    choice,
    float_in,
    int_in,
    learning_rate,
    number,
    positive_float,
)

__all__ = [
    "MODES",
    "CyclicSchedule",
    "interpolate",
    "whole_cycles",
    "whole_cycle_count",
    "whole_cycle_epochs",
    "cyclic_lr",
    "cyclic_momentum",
    "derive_step_sizes",
    "import_scale_fn",
    "scale_fn_path",
    "validate_schedule_args",
]

Mode = Literal["triangular", "triangular2", "exp_range"]
ScaleMode = Literal["cycle", "iterations"]
MODES: tuple[str, ...] = ("triangular", "triangular2", "exp_range")
SCALE_MODES: tuple[str, ...] = ("cycle", "iterations")


def _triangular(x: float) -> float:
    return 1.0


def _triangular2(x: float) -> float:
    return 1 / (2.0 ** (x - 1))


def _cycle_shape(step_size_up: float, step_size_down: Optional[float]) -> tuple[float, float]:
    """``(total_size, step_ratio)`` of a cycle, as torch's ``CyclicLR`` computes them."""
    up = float(step_size_up)
    down = float(step_size_down) if step_size_down is not None else up
    total_size = up + down
    return total_size, up / total_size


def _position(step: int, total_size: float, step_ratio: float) -> tuple[int, float]:
    cycle = math.floor(1 + step / total_size)
    x = 1.0 + step / total_size - cycle
    if x <= step_ratio:
        scale_factor = x / step_ratio
    else:
        scale_factor = (x - 1) / (step_ratio - 1)
    return cycle, scale_factor


def _amplitude(step: int, cycle: int, mode: str, gamma: float, scale_fn: Optional[Callable[[float], float]],
               scale_mode: str) -> float:
    if scale_fn is None:
        if mode == "triangular":
            return _triangular(cycle)
        if mode == "triangular2":
            return _triangular2(cycle)
        return gamma**step  # exp_range: gamma applies per iteration, as in torch
    return scale_fn(cycle) if scale_mode == "cycle" else scale_fn(step)


def interpolate(low: float, high: float, point: tuple[float, float]) -> float:
    """``low + (high - low) * scale_factor * amplitude``, in torch's order of operations (bitwise equal).

    ``point`` is :meth:`CyclicSchedule.point`. With ``low`` > ``high`` it runs the other way, as momentum does.
    """
    scale_factor, amp = point
    return low + (high - low) * scale_factor * amp


@dataclass(frozen=True)
class CyclicSchedule:
    """The shape of a cycle, independent of the bounds: the value at step ``t`` is a pure function of ``t``.

    :meth:`point` gives ``(scale_factor, amplitude)`` once per step; :func:`interpolate` turns it into a value
    between any two bounds, so one point serves every param group (and momentum) of a step. This is the only
    place where the CLR formula lives: :func:`cyclic_lr`, :func:`cyclic_momentum` and the callback use it.

    With ``final_lr_ratio`` < 1 and ``total_steps``, the run's last ``step_size_down`` steps are an annealing tail
    (an annihilation tail in the last falling half, as in Smith's 1cycle): the lower bound falls geometrically
    from ``base_lr`` to ``base_lr * final_lr_ratio`` at ``total_steps`` (:meth:`floor` is that factor), and the
    position in the cycle falls linearly from where the cycle is at the tail's first step down to 0. When the run
    ends at a cycle end, the tail is exactly the last falling half; when it would end mid-cycle, the tail still
    ends the run at ``base_lr * final_lr_ratio``, falling from the cycle's LR at the tail's first step.

    Example:
        >>> s = CyclicSchedule(step_size_up=2, step_size_down=2, mode="triangular2")
        >>> [s.lr(t, 0.1, 0.5) for t in (0, 2, 6)]
        [0.1, 0.5, 0.30000000000000004]
        >>> tail = CyclicSchedule(step_size_up=2, step_size_down=2, total_steps=8, final_lr_ratio=0.01)
        >>> [round(tail.lr(t, 0.1, 0.5), 6) for t in (4, 6, 7, 8)]
        [0.1, 0.5, 0.255, 0.001]
    """

    step_size_up: float
    step_size_down: Optional[float] = None
    mode: str = "triangular"
    gamma: float = 1.0
    scale_fn: Optional[Callable[[float], float]] = None
    scale_mode: str = "cycle"
    total_steps: Optional[int] = None
    final_lr_ratio: float = 1.0
    # Derived once from the fields above (the callback asks for a point per optimizer step): the cycle's
    # (total_size, step_ratio), and the annealing tail's (length, first step, scale factor at its first step),
    # None without a tail.
    _shape: tuple[float, float] = field(init=False, repr=False, compare=False)
    _tail: Optional[tuple[float, float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_shape", _cycle_shape(self.step_size_up, self.step_size_down))
        tail: Optional[tuple[float, float, float]] = None
        if self.final_lr_ratio != 1.0 and self.total_steps is not None:
            down = float(self.step_size_down if self.step_size_down is not None else self.step_size_up)
            start = max(0.0, self.total_steps - down)  # a run shorter than one falling half anneals throughout
            tail = (self.total_steps - start, start, _position(start, *self._shape)[1])  # type: ignore[arg-type]
        object.__setattr__(self, "_tail", tail)

    def point(self, step: int) -> tuple[float, float]:
        """``(scale_factor, amplitude)`` after ``step`` optimizer steps."""
        cycle, scale_factor = _position(step, *self._shape)
        if self._tail is not None and step > self._tail[1]:  # the tail: linearly down to the bottom at the end
            tail, start, first = self._tail
            scale_factor = first * max(0.0, 1.0 - (step - start) / tail)
        return scale_factor, _amplitude(step, cycle, self.mode, self.gamma, self.scale_fn, self.scale_mode)

    def floor(self, step: int) -> float:
        """The factor on the lower bound at ``step``: 1 except in the annealing tail."""
        if self._tail is None:
            return 1.0
        tail, start, _ = self._tail
        if step <= start:
            return 1.0
        return self.final_lr_ratio ** min(1.0, (step - start) / tail)

    def lr(self, step: int, base_lr: float, max_lr: float) -> float:
        return interpolate(base_lr * self.floor(step), max_lr, self.point(step))

    def momentum(self, step: int, base_momentum: float, max_momentum: float) -> float:
        """Inverse to the LR: ``max_momentum`` at ``base_lr``, ``base_momentum`` at the peak."""
        return interpolate(max_momentum, base_momentum, self.point(step))


def cyclic_lr(
    step: int,
    *,
    base_lr: float,
    max_lr: float,
    step_size_up: float,
    step_size_down: Optional[float] = None,
    mode: Mode = "triangular",
    gamma: float = 1.0,
    scale_fn: Optional[Callable[[float], float]] = None,
    scale_mode: ScaleMode = "cycle",
    total_steps: Optional[int] = None,
    final_lr_ratio: float = 1.0,
) -> float:
    """The cyclical learning rate after ``step`` optimizer steps.

    Args:
        step: Number of optimizer steps taken so far (0 for the first step).
        base_lr: Lower bound of the cycle.
        max_lr: Upper bound of the cycle (its amplitude is scaled by the mode).
        step_size_up: Optimizer steps in the rising half of a cycle.
        step_size_down: Optimizer steps in the falling half; ``None`` means ``step_size_up``.
        mode: ``"triangular"`` (constant amplitude), ``"triangular2"`` (amplitude halves every
            cycle) or ``"exp_range"`` (amplitude times ``gamma ** step``). Ignored when
            ``scale_fn`` is given.
        gamma: Per-step decay for ``"exp_range"``. Smith used 0.99994.
        scale_fn: Custom amplitude function of the cycle number or the step.
        scale_mode: What ``scale_fn`` receives: ``"cycle"`` or ``"iterations"``.
        total_steps: The run's length, for ``final_lr_ratio``.
        final_lr_ratio: Below 1, the lower bound anneals over the last ``step_size_down`` steps before
            ``total_steps`` down to ``base_lr * final_lr_ratio`` (see :class:`CyclicSchedule`).

    Example:
        >>> cyclic_lr(2000, base_lr=1e-3, max_lr=6e-3, step_size_up=2000)
        0.006
    """
    schedule = CyclicSchedule(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode, total_steps,
                              final_lr_ratio)
    return schedule.lr(step, base_lr, max_lr)


def cyclic_momentum(
    step: int,
    *,
    base_momentum: float,
    max_momentum: float,
    step_size_up: float,
    step_size_down: Optional[float] = None,
    mode: Mode = "triangular",
    gamma: float = 1.0,
    scale_fn: Optional[Callable[[float], float]] = None,
    scale_mode: ScaleMode = "cycle",
) -> float:
    """The momentum that runs inversely to :func:`cyclic_lr`: ``max_momentum`` when the LR is at
    its base, ``base_momentum`` when it peaks. Same formula as torch's ``CyclicLR``.

    Example:
        >>> cyclic_momentum(4, base_momentum=0.85, max_momentum=0.95, step_size_up=4)
        0.85
    """
    schedule = CyclicSchedule(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
    return schedule.momentum(step, base_momentum, max_momentum)


def whole_cycles(total_steps: int, cycles: int) -> tuple[int, int]:
    """``(step_size_up, step_size_down)`` for ``cycles`` whole cycles filling ``total_steps``: the falling half
    takes up the rounding, so the last cycle ends fewer than ``cycles`` steps before the end.

    Example:
        >>> whole_cycles(50, 2)
        (12, 13)
    """
    cycles = max(1, int(cycles))
    up = max(1, int(total_steps) // (2 * cycles))
    down = max(1, int(total_steps) // cycles - up)
    return up, down


def whole_cycle_count(budget: float, half_cycle: float) -> int:
    """How many whole cycles of ``2 * half_cycle`` fit ``budget`` (both in epochs, or both in steps): the nearest
    whole number, at least one. The one rounding of a half-cycle to a run's length: a run that keeps its length
    fits this many cycles into it (:func:`derive_step_sizes`), a run that keeps its half-cycle trains this many
    (:func:`whole_cycle_epochs`).

    Example:
        >>> [whole_cycle_count(48, h) for h in (1, 5, 10, 12, 30)]
        [24, 5, 2, 2, 1]
    """
    return max(1, round(budget / (2 * half_cycle)))


def whole_cycle_epochs(budget_epochs: int, half_cycle_epochs: int) -> int:
    """The whole number of cycles of ``2 * half_cycle_epochs`` epochs nearest to ``budget_epochs`` (at least one),
    in epochs: how a run whose half-cycle is exactly ``half_cycle_epochs`` is made to end at a cycle end.

    Example:
        >>> [whole_cycle_epochs(6, h) for h in (1, 2, 3, 4)]
        [6, 8, 6, 8]
    """
    return 2 * int(half_cycle_epochs) * whole_cycle_count(int(budget_epochs), int(half_cycle_epochs))


def derive_step_sizes(
    half_cycle_epochs: float,
    steps_per_epoch: int,
    *,
    total_steps: Optional[float] = None,
    step_size_down: Optional[int] = None,
) -> tuple[int, int]:
    """``(step_size_up, step_size_down)`` in optimizer steps for a half-cycle given in epochs.

    With ``total_steps`` (the run's length, when known and finite) and no explicit ``step_size_down``, the
    cycle is rounded so that a whole number of cycles fills the run and it ends back at ``base_lr``
    (:func:`whole_cycles`).

    Example:
        >>> derive_step_sizes(2.0, 5, total_steps=50)  # 2 cycles of 12 up + 13 down
        (12, 13)
        >>> derive_step_sizes(2.0, 5)
        (10, 10)
    """
    up = max(1, round(half_cycle_epochs * steps_per_epoch))
    down = step_size_down or up
    if step_size_down is None and total_steps is not None and math.isfinite(total_steps) and total_steps > 0:
        return whole_cycles(int(total_steps), whole_cycle_count(total_steps, up))
    return up, down


def validate_schedule_args(
    *,
    base_lr: Optional[float] = None,
    max_lr: Optional[float] = None,
    step_size_up: Optional[float] = None,
    step_size_down: Optional[float] = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_mode: str = "cycle",
    base_momentum: Optional[float] = None,
    max_momentum: Optional[float] = None,
    scale_fn: object = None,
    half_cycle_epochs: Optional[float] = None,
    final_lr_ratio: Optional[float] = 1.0,
) -> None:
    """Raise :class:`~lightning_clr._validation.ArgumentError` (a ``ValueError`` and a ``TypeError``) naming the
    first bad argument and its value. ``None`` means "not given yet" (resolved later) and passes.
    """
    for name, value in (("base_lr", base_lr), ("max_lr", max_lr)):
        if value is not None:
            learning_rate(name, value)
    if half_cycle_epochs is not None:
        positive_float("half_cycle_epochs", half_cycle_epochs)
    if half_cycle_epochs is not None and half_cycle_epochs > MAX_STEPS:
        raise ArgumentError("half_cycle_epochs", half_cycle_epochs, f"at most {MAX_STEPS:.0e} epochs")
    if base_lr is not None and max_lr is not None and max_lr < base_lr:
        raise ArgumentError("max_lr", max_lr, f">= `base_lr` ({base_lr!r})")
    for name, value in (("step_size_up", step_size_up), ("step_size_down", step_size_down)):
        if value is not None:
            int_in(name, value, 1, MAX_STEPS, "optimizer steps")
    choice("mode", mode, MODES)
    choice("scale_mode", scale_mode, SCALE_MODES)
    if mode == "exp_range" and scale_fn is None:
        float_in("gamma", gamma, 0.0, 1.0, low_open=True)
    elif number("gamma", gamma) != 1.0:
        reason = "a custom `scale_fn` sets the amplitude" if scale_fn is not None else f"mode={mode!r} ignores it"
        raise ArgumentError("gamma", gamma, "1.0 unless mode='exp_range'", reason)
    if final_lr_ratio is not None:  # None: automatic (CycleSettings)
        float_in("final_lr_ratio", final_lr_ratio, 0.0, 1.0, low_open=True)
    for name, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
        if value is not None:
            float_in(name, value, 0.0, 1.0, high_open=True)
    if base_momentum is not None and max_momentum is not None and base_momentum > max_momentum:
        raise ArgumentError(
            "base_momentum",
            base_momentum,
            f"<= `max_momentum` ({max_momentum!r})",
            "momentum runs inversely to the LR, from max_momentum at base_lr down to base_momentum at max_lr",
        )


def scale_fn_path(fn: Callable[[float], float]) -> Optional[str]:
    """``"module:qualname"`` for an importable function, ``None`` for a lambda or a local function."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    try:
        if import_scale_fn(f"{module}:{qualname}") is not fn:
            return None
    except ValueError:
        return None
    return f"{module}:{qualname}"


def import_scale_fn(path: str, argument: str = "scale_fn") -> Callable[[float], float]:
    """Import a scale function from ``"package.module:function"`` (or ``"package.module.function"``).

    Importing runs the module's code: call it only on a path the user named, never on one read from a
    checkpoint. A bad path raises :class:`~lightning_clr._validation.ArgumentError` naming ``argument``.
    """
    requirement = "an import path like 'mypkg.schedules:my_scale' of a function"
    if not isinstance(path, str) or not _IMPORT_PATH.fullmatch(path):
        raise ArgumentError(argument, path, requirement)
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ArgumentError(argument, path, requirement)
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ArgumentError(argument, path, requirement, f"{type(err).__name__}: {err}") from None
    if not callable(obj):
        raise ArgumentError(argument, path, requirement, "it names something that is not callable")
    if not (inspect.isfunction(obj) or inspect.ismethod(obj)):  # os.system, print, a class: not a scale function
        raise ArgumentError(argument, path, "an import path of a Python function (def) of the cycle number or step",
                            f"it names a {type(obj).__name__}")
    return obj  # type: ignore[return-value]


# Dotted Python names, optionally "module:attribute.path"; nothing relative, no file paths.
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")
