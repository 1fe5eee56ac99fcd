"""What a fit resolved: the immutable :class:`CyclePlan`, which is also the checkpoint state.

A plan holds everything the LR at step ``t`` depends on (bounds per param group, step sizes, mode, ...), so the
schedule of a run is ``plan`` + the optimizer step counts. It is validated when built and when loaded from a
checkpoint, and a checkpoint never brings code: its ``scale_fn_path`` is only compared with the path of the
function the user passed, never imported. The resume rules are in ``_resume``. Torch-free.

Example:
    >>> plan = CyclePlan(base_lr=(0.01,), max_lr=(0.1,), group_counts=(1,), step_size_up=4, step_size_down=4)
    >>> state = plan.to_state(steps=[3])
    >>> CyclePlan.from_state(state) == (plan, [3])
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from lightning_clr._validation import MAX_STEPS, ArgumentError, boolean, choice, float_in, int_in, positive_float
from lightning_clr.schedule import MODES, SCALE_MODES, CyclicSchedule, validate_schedule_args

__all__ = ["STATE_VERSION", "CyclePlan", "one_or_list"]

STATE_VERSION = 3  # 3: the divergence guard's `lr_scale` and `interventions` (optional: 1 and 2 load without them)
# Optional plan keys: a state saved before a key was added loads without it.
_OPTIONAL = frozenset({"lr_scale", "interventions", "start_step", "optimizer_cycles"})
_INTERVENTION_KEYS = {"step": int, "reason": str, "lr_scale": float}
_KEYS_V1 = ("base_lr", "max_lr", "step_size_up", "step_size_down", "steps_per_epoch", "steps", "mode", "gamma",
            "scale_fn", "range_test")


@dataclass(frozen=True)
class CyclePlan:
    """The resolved cycle of one fit: immutable, the checkpoint state, validated on construction.

    Attributes:
        base_lr, max_lr: One bound per param group, across all optimizers in order.
        group_counts: Param groups per optimizer.
        step_size_up, step_size_down: Optimizer steps of the rising and falling half-cycles.
        mode, gamma, scale_mode: The amplitude rule (see :func:`lightning_clr.cyclic_lr`).
        scale_fn_path: Import path of a custom ``scale_fn``; ``custom_scale_fn`` is True whenever one was used
            (also a lambda, whose path is ``None``).
        cycle_momentum, base_momentum, max_momentum: The momentum cycle.
        final_lr_ratio: The annealing tail's end, as a fraction of ``base_lr`` (1: none).
        steps_per_epoch: Optimizer steps per epoch and rank (``None`` for a dataloader without length).
        total_steps: The run's planned optimizer steps when known.
        half_cycle_epochs: The half-cycle the step sizes were derived from (``None`` when they were given).
        range_test: The range test's result as a dict (``RangeTestResult.to_dict()``), when it ran.
        lr_scale: What the divergence guard multiplied both bounds of every group by (1: it never acted); the
            LR follows ``effective_base_lr`` and ``effective_max_lr``.
        interventions: One dict per back-off of the guard: ``step`` (optimizer step), ``reason``, ``lr_scale``
            (after it).
        start_step: The trainer's global step at this plan's step 0: 0, or the step of a resumed run that the
            callback joined (a checkpoint without its state); ``total_steps`` counts from there.
        optimizer_cycles: Per optimizer, ``(step_size_up, step_size_down, steps_per_epoch, total_steps)`` in its own
            steps, for optimizers that step at different rates (measured in the first epoch); ``None``: every
            optimizer follows the fields above.

    Example:
        >>> plan = CyclePlan(base_lr=(1e-4, 1e-3), max_lr=(4e-4, 4e-3), group_counts=(2,), step_size_up=50,
        ...                  step_size_down=50)
        >>> plan.cycle_length, plan.schedule().lr(50, plan.base_lr[1], plan.max_lr[1])
        (100, 0.004)
    """

    base_lr: tuple[float, ...]
    max_lr: tuple[float, ...]
    group_counts: tuple[int, ...]
    step_size_up: int
    step_size_down: int
    mode: str = "triangular"
    gamma: float = 1.0
    scale_mode: str = "cycle"
    scale_fn_path: Optional[str] = None
    custom_scale_fn: bool = False
    cycle_momentum: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    final_lr_ratio: float = 1.0
    steps_per_epoch: Optional[int] = None
    total_steps: Optional[int] = None
    half_cycle_epochs: Optional[float] = None
    range_test: Optional[dict[str, Any]] = None
    lr_scale: float = 1.0
    interventions: tuple[dict[str, Any], ...] = ()
    start_step: int = 0
    optimizer_cycles: Optional[tuple[tuple[int, int, Optional[int], Optional[int]], ...]] = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "group_counts", tuple(int_in(f"group_counts[{i}]", n, 1) for i, n in enumerate(
            _sequence("group_counts", self.group_counts))))
        n = sum(self.group_counts)
        for name in ("base_lr", "max_lr"):
            values = _sequence(name, getattr(self, name))
            if len(values) != n:
                raise ArgumentError(name, list(values), f"one value per param group ({n})")
            put(self, name, tuple(positive_float(f"{name}[{i}]", v) for i, v in enumerate(values)))
        for i, (b, m) in enumerate(zip(self.base_lr, self.max_lr)):
            if m < b:
                raise ArgumentError(f"max_lr[{i}]", m, f">= base_lr[{i}] ({b!r})")
        put(self, "step_size_up", int_in("step_size_up", self.step_size_up, 1, MAX_STEPS))
        put(self, "step_size_down", int_in("step_size_down", self.step_size_down, 1, MAX_STEPS))
        choice("mode", self.mode, MODES)
        choice("scale_mode", self.scale_mode, SCALE_MODES)
        put(self, "gamma", float_in("gamma", self.gamma, 0.0, 1.0, low_open=True))
        validate_schedule_args(base_momentum=self.base_momentum, max_momentum=self.max_momentum,
                               final_lr_ratio=self.final_lr_ratio)
        for name in ("base_momentum", "max_momentum", "final_lr_ratio"):
            put(self, name, float(getattr(self, name)))
        for name in ("custom_scale_fn", "cycle_momentum"):
            put(self, name, boolean(name, getattr(self, name)))
        if self.scale_fn_path is not None and not isinstance(self.scale_fn_path, str):
            raise ArgumentError("scale_fn_path", self.scale_fn_path, "None or an import path string")
        for name in ("steps_per_epoch", "total_steps"):
            value = getattr(self, name)
            put(self, name, None if value is None else int_in(name, value, 1))
        if self.final_lr_ratio != 1.0 and self.total_steps is None:
            raise ArgumentError("final_lr_ratio", self.final_lr_ratio, "1.0 when the run's length is unknown",
                                "the annealing tail ends at the run's last step: set max_epochs or max_steps")
        if self.half_cycle_epochs is not None:
            put(self, "half_cycle_epochs", positive_float("half_cycle_epochs", self.half_cycle_epochs))
        if self.range_test is not None and not isinstance(self.range_test, dict):
            raise ArgumentError("range_test", self.range_test, "None or a dict")
        put(self, "lr_scale", float_in("lr_scale", self.lr_scale, 0.0, 1.0, low_open=True))
        put(self, "interventions", tuple(_intervention(i, r) for i, r in enumerate(
            _sequence("interventions", self.interventions, empty=True))))
        put(self, "start_step", int_in("start_step", self.start_step, 0))
        if self.optimizer_cycles is not None:
            put(self, "optimizer_cycles", _optimizer_cycles(self.optimizer_cycles, len(self.group_counts),
                                                            self.final_lr_ratio))

    # ------------------------------------------------------------------ views
    def schedule(self, scale_fn: Any = None, optimizer: int = 0) -> CyclicSchedule:
        """The pure schedule of optimizer ``optimizer``; ``scale_fn`` is the user's function (a plan holds no
        code)."""
        up, down, _, total = self.cycle_of(optimizer)
        return CyclicSchedule(up, down, self.mode, self.gamma, scale_fn if self.custom_scale_fn else None,
                              self.scale_mode, total, self.final_lr_ratio)

    def cycle_of(self, optimizer: int) -> tuple[int, int, Optional[int], Optional[int]]:
        """``(step_size_up, step_size_down, steps_per_epoch, total_steps)`` of optimizer ``optimizer``, in its
        own steps."""
        if self.optimizer_cycles is not None:
            return self.optimizer_cycles[optimizer]
        return self.step_size_up, self.step_size_down, self.steps_per_epoch, self.total_steps

    @property
    def effective_base_lr(self) -> tuple[float, ...]:
        """Lower bounds that the LR follows, ``base_lr`` x ``lr_scale`` (after the guard's back-offs)."""
        return self.base_lr if self.lr_scale == 1.0 else tuple(b * self.lr_scale for b in self.base_lr)

    @property
    def effective_max_lr(self) -> tuple[float, ...]:
        """Upper bounds that the LR follows, ``max_lr`` x ``lr_scale``."""
        return self.max_lr if self.lr_scale == 1.0 else tuple(m * self.lr_scale for m in self.max_lr)

    @property
    def cycle_length(self) -> int:
        return self.step_size_up + self.step_size_down

    def replace(self, **changes: Any) -> CyclePlan:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ checkpoint state
    def to_state(self, steps: list[int]) -> dict[str, Any]:
        """The checkpoint state: plain Python values only (safe for ``torch.load(weights_only=True)``)."""
        plan = dataclasses.asdict(self)
        for name in ("base_lr", "max_lr", "group_counts", "interventions"):
            plan[name] = list(plan[name])
        if self.optimizer_cycles is not None:
            plan["optimizer_cycles"] = [list(row) for row in self.optimizer_cycles]
        return {"version": STATE_VERSION, "plan": plan, "steps": [int(s) for s in steps]}

    @classmethod
    def from_state(cls, state: Any) -> tuple[CyclePlan, list[int]]:
        """Validate a checkpoint state and return ``(plan, steps)``; a bad state raises a ``ValueError`` that
        names the key. Reads this version and the first release's (version 1)."""
        if not isinstance(state, dict):
            raise _bad_state("(the state)", state, "a dict")
        version = state.get("version")
        if version == 1:
            return _from_v1(state)
        if version not in (2, STATE_VERSION):
            raise _bad_state("version", version, f"{STATE_VERSION} (or 2, or 1, the first release's)")
        for key in ("plan", "steps"):
            if key not in state:
                raise _bad_state(key, "<missing>", "present")
        plan_state = state["plan"]
        if not isinstance(plan_state, dict):
            raise _bad_state("plan", plan_state, "a dict")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(plan_state) - _OPTIONAL)
        if missing:
            raise _bad_state(f"plan.{missing[0]}", "<missing>", "present")
        unknown = sorted(set(plan_state) - fields)
        if unknown:
            raise _bad_state(f"plan.{unknown[0]}", plan_state[unknown[0]], "a known key")
        try:
            plan = cls(**plan_state)
        except ArgumentError as err:
            raise _bad_state(f"plan.{err.argument}", err.value, err.requirement) from None
        return plan, _steps(state["steps"], len(plan.group_counts))


def _sequence(name: str, value: Any, empty: bool = False) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or not (value or empty):
        raise ArgumentError(name, value, "a list" if empty else "a non-empty list")
    return tuple(value)


def _intervention(i: int, record: Any) -> dict[str, Any]:
    """One back-off of the guard, checked key by key (plain values only: it comes from a checkpoint)."""
    if not isinstance(record, dict) or set(record) != set(_INTERVENTION_KEYS):
        raise ArgumentError(f"interventions[{i}]", record, f"a dict with the keys {sorted(_INTERVENTION_KEYS)}")
    if not isinstance(record["reason"], str):
        raise ArgumentError(f"interventions[{i}].reason", record["reason"], "a string")
    return {"step": int_in(f"interventions[{i}].step", record["step"], 0),
            "reason": record["reason"],
            "lr_scale": float_in(f"interventions[{i}].lr_scale", record["lr_scale"], 0.0, 1.0, low_open=True)}


def _optimizer_cycles(value: Any, n_optimizers: int, final_lr_ratio: float) -> tuple[Any, ...]:
    rows = _sequence("optimizer_cycles", value)
    if len(rows) != n_optimizers:
        raise ArgumentError("optimizer_cycles", value, f"one row per optimizer ({n_optimizers})")
    cycles = []
    for i, row in enumerate(rows):
        name = f"optimizer_cycles[{i}]"
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise ArgumentError(name, row, "[step_size_up, step_size_down, steps_per_epoch, total_steps]")
        up, down = (int_in(name, v, 1, MAX_STEPS) for v in row[:2])
        per_epoch, total = (None if v is None else int_in(name, v, 1) for v in row[2:])
        if final_lr_ratio != 1.0 and total is None:
            raise ArgumentError(name, row, "a known total_steps with an annealing tail")
        cycles.append((up, down, per_epoch, total))
    return tuple(cycles)


def _steps(value: Any, n_optimizers: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != n_optimizers:
        raise _bad_state("steps", value, f"a list of {n_optimizers} step count(s), one per optimizer")
    try:
        return [int_in(f"steps[{i}]", v, 0) for i, v in enumerate(value)]
    except ArgumentError as err:
        raise _bad_state(err.argument, err.value, err.requirement) from None


def _bad_state(key: str, value: Any, requirement: str) -> ValueError:
    return ValueError(
        f"The checkpoint's CyclicLearningRate state is invalid: `{key}` must be {requirement}, got {value!r}."
        " Nothing was trained; resume from another checkpoint, or fit without `ckpt_path`."
    )


def _from_v1(state: dict[str, Any]) -> tuple[CyclePlan, list[int]]:
    """The first release's flat state (no momentum settings, one group count unknown: derived from steps)."""
    for key in _KEYS_V1:
        if key not in state:
            raise _bad_state(key, "<missing>", "present")
    steps = state["steps"]
    if not isinstance(steps, (list, tuple)) or not steps:
        raise _bad_state("steps", steps, "a non-empty list")
    n_groups = len(state["base_lr"]) if isinstance(state["base_lr"], (list, tuple)) else 0
    if len(steps) != 1 and n_groups:  # one optimizer per step count; groups can only be split for one
        raise _bad_state("steps", steps, "one step count (a version-1 state of several optimizers cannot be split)")
    try:
        plan = CyclePlan(
            base_lr=state["base_lr"], max_lr=state["max_lr"], group_counts=(max(n_groups, 1),),
            step_size_up=state["step_size_up"], step_size_down=state["step_size_down"],
            mode=state["mode"], gamma=state["gamma"], scale_fn_path=state["scale_fn"],
            custom_scale_fn=state["scale_fn"] is not None, steps_per_epoch=state["steps_per_epoch"],
            range_test=state["range_test"],
        )
    except ArgumentError as err:
        raise _bad_state(err.argument, err.value, err.requirement) from None
    return plan, _steps(steps, 1)


def one_or_list(values: Optional[tuple[Any, ...]]) -> Any:
    """One value when every param group shares it, else the list (``None`` stays ``None``)."""
    if values is None:
        return None
    return values[0] if len(set(values)) == 1 else list(values)


def _show(value: Any) -> Any:
    if isinstance(value, tuple):
        return one_or_list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
