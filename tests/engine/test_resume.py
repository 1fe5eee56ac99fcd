"""The resume rules, on a plan and the resumed callback's settings: a default takes the checkpoint's value, an
explicit change takes effect with a message naming it, and no code comes from the checkpoint."""

from __future__ import annotations

import pytest

from lightning_clr import ArgumentError
from lightning_clr.engine._resolve import Cycle, build_plan
from lightning_clr.engine._resume import reconcile
from lightning_clr.engine._settings import CycleSettings


def _plan(**settings: object) -> object:
    """The plan a fit of 10 optimizer steps per epoch resolved from ``settings`` (2 param groups)."""
    given = CycleSettings(base_lr=[0.01, 0.1], max_lr=[0.1, 1.0], **settings)
    cycle = Cycle(20, 20, 10, 80, given.half_cycle_epochs if given.step_size_up is None else None, 0.1)
    return build_plan(given, cycle, (given.base_lr, given.max_lr, None), [_Groups(2)])


class _Groups:
    def __init__(self, n: int) -> None:
        self.param_groups = [{} for _ in range(n)]


def test_settings_left_at_their_defaults_take_the_checkpoints_values() -> None:
    plan = _plan(mode="triangular2")
    resumed, messages = reconcile(plan, CycleSettings())
    assert resumed == plan and messages == []


def test_an_explicit_change_takes_effect_and_says_so() -> None:
    plan = _plan()
    resumed, messages = reconcile(plan, CycleSettings(mode="triangular2", max_lr=[0.2, 2.0], half_cycle_epochs=3))
    assert resumed.mode == "triangular2" and resumed.max_lr == (0.2, 2.0)
    assert resumed.step_size_up == resumed.step_size_down == 30 and resumed.half_cycle_epochs == 3.0
    assert resumed.base_lr == plan.base_lr
    named = [m.split("`")[1] for m in messages]
    assert named == ["mode", "max_lr", "half_cycle_epochs", "step_size_up", "step_size_down"]
    assert all("the checkpoint has" in m for m in messages)
    assert "0.2" in messages[1] and "0.1" in messages[1]  # both values


def test_a_given_bound_must_fit_the_checkpoints_groups_and_other_bound() -> None:
    plan = _plan()
    with pytest.raises(ArgumentError) as info:
        reconcile(plan, CycleSettings(max_lr=[0.1, 0.2, 0.3]))
    assert info.value.argument == "max_lr"
    with pytest.raises(ArgumentError, match="max < base in param group 1"):
        reconcile(plan, CycleSettings(max_lr=0.05))  # above group 0's base (0.01), below group 1's (0.1)


def test_a_checkpoint_with_a_custom_scale_fn_needs_it_passed_again() -> None:
    plan = _plan(scale_fn="helpers:sqrt_scale")
    assert plan.custom_scale_fn and plan.scale_fn_path == "helpers:sqrt_scale"
    with pytest.raises(ValueError, match="recorded as 'helpers:sqrt_scale'.*never imports code"):
        reconcile(plan, CycleSettings())
    resumed, messages = reconcile(plan, CycleSettings(scale_fn="helpers:sqrt_scale"))
    assert resumed == plan and messages == []
