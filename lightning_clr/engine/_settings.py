"""What the user asked for: the validated, frozen settings of a :class:`~lightning_clr.CyclicLearningRate`.

Settings are input only. What a fit resolves from them (bounds per param group, step sizes, the range test's
result) is a :class:`~lightning_clr.CyclePlan`; the two are never mixed in one attribute.

Example:
    >>> s = CycleSettings(max_lr=0.1, mode="triangular2")
    >>> s.max_lr, s.base_lr, s.changed_from_default()
    ((0.1,), None, ('max_lr', 'mode'))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lightning_clr._validation import ArgumentError, boolean, learning_rate, positive_float
from lightning_clr.engine._divergence import DivergenceGuard
from lightning_clr.range_test import RangeTestConfig
from lightning_clr.schedule import import_scale_fn, scale_fn_path, validate_schedule_args

__all__ = ["DEFAULT_FINAL_LR_RATIO", "DEFAULT_HALF_CYCLE_EPOCHS", "CycleSettings"]

DEFAULT_HALF_CYCLE_EPOCHS = 2.0
DEFAULT_FINAL_LR_RATIO = 0.1  # the automatic annealing tail: docs/benchmarks.md section 4 measures why


def lr_bounds(name: str, value: Any) -> Optional[tuple[float, ...]]:
    """``None``, one learning rate, or a non-empty list of them (one per param group; numpy and 0-d torch numbers
    accepted), as a tuple; a bad one raises an :class:`ArgumentError` naming ``name`` (``name[i]`` in a list).

    Example:
        >>> lr_bounds("max_lr", [1e-3, 1e-2])
        (0.001, 0.01)
    """
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ArgumentError(name, value, "a number > 0 or a non-empty list of them (one per param group)")
    if len(values) == 1:
        return (learning_rate(name, values[0]),)
    return tuple(learning_rate(f"{name}[{i}]", v) for i, v in enumerate(values))


@dataclass(frozen=True)
class CycleSettings:
    """The arguments of :class:`~lightning_clr.CyclicLearningRate`, validated once, by name.

    Bounds are stored as tuples (one value, or one per param group); numbers may be Python, numpy or 0-d
    torch numbers. ``scale_fn`` may be given as an import path, which is imported here (the user named it).
    See :class:`~lightning_clr.CyclicLearningRate` for what each setting means.

    Example:
        >>> CycleSettings(base_lr=[1e-4, 1e-3]).base_lr
        (0.0001, 0.001)
    """

    base_lr: Optional[tuple[float, ...]] = None
    max_lr: Optional[tuple[float, ...]] = None
    step_size_up: Optional[int] = None
    step_size_down: Optional[int] = None
    half_cycle_epochs: float = DEFAULT_HALF_CYCLE_EPOCHS
    fit_whole_cycles: bool = True
    mode: str = "triangular"
    gamma: float = 1.0
    scale_fn: Optional[Callable[[float], float]] = field(default=None, compare=False)
    scale_mode: str = "cycle"
    cycle_momentum: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    final_lr_ratio: Optional[float] = None  # None: automatic, see `automatic_final_lr_ratio`
    range_test: RangeTestConfig = field(default_factory=RangeTestConfig)
    guard: DivergenceGuard = field(default_factory=DivergenceGuard)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "base_lr", lr_bounds("base_lr", self.base_lr))
        put(self, "max_lr", lr_bounds("max_lr", self.max_lr))
        if self.base_lr is not None and self.max_lr is not None:
            base, high = self.base_lr, self.max_lr
            if len(base) != len(high) and 1 not in (len(base), len(high)):
                raise ArgumentError(
                    "max_lr", list(high), f"as many values as `base_lr` ({list(base)!r}), or one value"
                )
            n = max(len(base), len(high))
            for b, m in zip(base * (n // len(base)), high * (n // len(high))):
                if m < b:
                    raise ArgumentError("max_lr", _show(high), f">= `base_lr` ({_show(base)!r}) in every param group")
        scale_fn: Any = self.scale_fn
        if isinstance(scale_fn, str):
            put(self, "scale_fn", import_scale_fn(scale_fn))
        elif scale_fn is not None and not callable(scale_fn):
            raise ArgumentError("scale_fn", scale_fn, "a function of one number, or its import path 'pkg.module:fn'")
        for name in ("fit_whole_cycles", "cycle_momentum"):
            put(self, name, boolean(name, getattr(self, name)))
        positive_float("half_cycle_epochs", self.half_cycle_epochs)  # None is not "not given" here
        validate_schedule_args(
            step_size_up=self.step_size_up,
            step_size_down=self.step_size_down,
            mode=self.mode,
            gamma=self.gamma,
            scale_mode=self.scale_mode,
            base_momentum=self.base_momentum,
            max_momentum=self.max_momentum,
            scale_fn=self.scale_fn,
            half_cycle_epochs=self.half_cycle_epochs,
            final_lr_ratio=self.final_lr_ratio,
        )
        for name in ("step_size_up", "step_size_down"):  # numpy / 0-d tensor integers as plain ints
            value = getattr(self, name)
            put(self, name, None if value is None else int(_plain(value)))
        for name in ("half_cycle_epochs", "gamma", "base_momentum", "max_momentum", "final_lr_ratio"):
            value = getattr(self, name)
            put(self, name, None if value is None else float(_plain(value)))
        if not isinstance(self.range_test, RangeTestConfig):
            raise ArgumentError("range_test", self.range_test, "a RangeTestConfig")
        if not isinstance(self.guard, DivergenceGuard):
            raise ArgumentError("guard", self.guard, "a DivergenceGuard (DivergenceGuard(enabled=False) turns it off)")

    @property
    def scale_fn_path(self) -> Optional[str]:
        """``"module:function"`` of ``scale_fn`` (what a checkpoint stores), ``None`` for none or a lambda."""
        return scale_fn_path(self.scale_fn) if self.scale_fn is not None else None

    @property
    def needs_range_test(self) -> bool:
        return self.base_lr is None or self.max_lr is None

    @property
    def automatic_final_lr_ratio(self) -> float:
        """The annealing tail's ratio. The one given, else (``None``, automatic) the default tail
        (``DEFAULT_FINAL_LR_RATIO``) when a bound is left to the callback, and none (1.0) when both bounds were
        given, so that torch's ``CyclicLR`` arguments give torch's schedule.

        Example:
            >>> torch_args = CycleSettings(base_lr=1e-3, max_lr=6e-3, step_size_up=2000)
            >>> CycleSettings().automatic_final_lr_ratio, torch_args.automatic_final_lr_ratio
            (0.1, 1.0)
        """
        if self.final_lr_ratio is not None:
            return self.final_lr_ratio
        return DEFAULT_FINAL_LR_RATIO if self.needs_range_test else 1.0

    def changed_from_default(self) -> tuple[str, ...]:
        """The settings that differ from their defaults, in field order. A setting equal to its default counts
        as left at its default (LightningCLI passes every argument, defaults included)."""
        defaults = CycleSettings()
        changed = []
        for f in dataclasses.fields(self):
            mine, default = getattr(self, f.name), getattr(defaults, f.name)
            if f.name == "scale_fn":
                if mine is not None:
                    changed.append(f.name)
            elif mine != default:
                changed.append(f.name)
        return tuple(changed)

    def replace(self, **changes: Any) -> CycleSettings:
        """A copy with ``changes``, validated again.

        Example:
            >>> CycleSettings().replace(half_cycle_epochs=4).half_cycle_epochs
            4.0
        """
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _show(values: tuple[float, ...]) -> Any:
    return values[0] if len(values) == 1 else list(values)
