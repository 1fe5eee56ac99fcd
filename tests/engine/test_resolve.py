"""From settings and a running fit to the plan: the cycle length, the bounds (given, or from the range test with
the groups' ratios kept), and the plan that both make."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import TinyModel, loader, trainer
from lightning.pytorch import Callback

from lightning_clr import ArgumentError, RangeTestConfig
from lightning_clr.engine._optimizers import training_optimizers
from lightning_clr.engine._resolve import (
    build_plan,
    describe,
    expand_bounds,
    resolve_bounds,
    resolve_cycle,
)
from lightning_clr.engine._settings import CycleSettings


class _Resolve(Callback):
    """Resolves ``settings`` at train start of a real fit, as the callback does."""

    def __init__(self, settings: CycleSettings) -> None:
        self.settings = settings

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = training_optimizers(trainer)
        self.cycle = resolve_cycle(self.settings, trainer)
        self.bounds = resolve_bounds(self.settings, trainer, pl_module, optimizers)
        self.plan = build_plan(self.settings, self.cycle, self.bounds, optimizers)


def _resolve(settings: CycleSettings, model: Any = None, **trainer_kwargs: Any) -> _Resolve:
    probe = _Resolve(settings)
    trainer(callbacks=[probe], **trainer_kwargs).fit(model or TinyModel(), loader(n=64, batch_size=8))
    return probe


def test_expand_bounds_gives_one_value_per_group_or_names_the_mismatch() -> None:
    assert expand_bounds("base_lr", (0.1,), 3) == (0.1, 0.1, 0.1)
    assert expand_bounds("base_lr", (0.1, 0.2), 2) == (0.1, 0.2)
    with pytest.raises(ArgumentError, match="have 3") as info:
        expand_bounds("max_lr", (0.1, 0.2), 3)
    assert info.value.argument == "max_lr"


def test_the_cycle_comes_from_half_cycle_epochs_and_whole_cycles_of_the_run() -> None:
    probe = _resolve(CycleSettings(base_lr=0.01, max_lr=0.1, half_cycle_epochs=1.0), max_epochs=4)
    up, down, per_epoch, total, half, final = probe.cycle
    assert (per_epoch, total, half) == (8, 32, 1.0)
    assert (up + down) * 2 == total and up == 8  # two whole cycles of 2 epochs
    assert final == 1.0  # both bounds given: torch's schedule, no automatic tail (docs/schedule.md)
    plan = probe.plan
    assert plan.base_lr == (0.01,) and plan.max_lr == (0.1,) and plan.group_counts == (1,)
    assert plan.step_size_up == 8 and plan.total_steps == 32 and plan.range_test is None
    assert "step_size_up=8" in describe(plan) and "annealing" not in describe(plan)
    tail = _resolve(CycleSettings(base_lr=0.01, max_lr=0.1, half_cycle_epochs=1.0, final_lr_ratio=0.1), max_epochs=4)
    assert tail.cycle[-1] == 0.1 and "annealing" in describe(tail.plan)  # a ratio given applies


def test_given_step_sizes_are_kept_and_no_half_cycle_is_recorded() -> None:
    probe = _resolve(CycleSettings(base_lr=0.01, max_lr=0.1, step_size_up=3, step_size_down=5), max_epochs=1)
    assert probe.cycle.step_size_up == 3 and probe.cycle.step_size_down == 5
    assert probe.cycle.half_cycle_epochs is None


def test_the_range_test_fills_the_missing_bound_and_keeps_the_groups_ratio() -> None:
    settings = CycleSettings(base_lr=[0.001, 0.01], range_test=RangeTestConfig(num_steps=12, save=False))
    probe = _resolve(settings, TinyModel(param_groups=2), max_epochs=1)
    base, high, result = probe.bounds
    assert result is not None and base == (0.001, 0.01)
    assert high[1] / high[0] == pytest.approx(10.0)  # the given bounds' ratio
    assert probe.plan.range_test == result.to_dict()


def test_fast_dev_run_skips_the_range_test_with_the_optimizers_lr_as_max_lr() -> None:
    probe = _resolve(CycleSettings(), TinyModel(lr=0.2), fast_dev_run=True)
    base, high, result = probe.bounds
    assert result is None and high == (0.2,) and base == pytest.approx((0.2 / 4,))
