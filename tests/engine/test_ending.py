"""The pure rules behind "runs end where the startup line says" (issue 20): the automatic tail, the tail of a run
that ends mid-cycle, what the startup line says, per-optimizer cycles and their checkpoint state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_clr import cyclic_lr
from lightning_clr.engine._ending import measured_cycles, run_end, scale_totals
from lightning_clr.engine._plan import CyclePlan
from lightning_clr.engine._resolve import describe
from lightning_clr.engine._resume import reconcile
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO, CycleSettings


# ------------------------------------------------------------------ the automatic tail
@pytest.mark.parametrize(
    "kwargs, ratio",
    [
        (dict(base_lr=1e-3, max_lr=6e-3, step_size_up=2000), 1.0),  # torch's arguments: torch's schedule
        (dict(base_lr=1e-3, max_lr=6e-3), 1.0),  # both bounds given
        (dict(), DEFAULT_FINAL_LR_RATIO),  # bounds from the range test
        (dict(max_lr=6e-3), DEFAULT_FINAL_LR_RATIO),  # one bound left to the callback
        (dict(base_lr=1e-3, max_lr=6e-3, final_lr_ratio=0.1), 0.1),  # given: always applies
        (dict(final_lr_ratio=1.0), 1.0),
    ],
)
def test_the_automatic_tail_is_on_only_for_automatic_bounds(kwargs, ratio):
    assert CycleSettings(**kwargs).automatic_final_lr_ratio == ratio


def test_a_final_lr_ratio_equal_to_the_automatic_value_counts_as_given():
    # LightningCLI passes every argument: the default None is "automatic", any number was given.
    assert "final_lr_ratio" not in CycleSettings().changed_from_default()
    assert "final_lr_ratio" in CycleSettings(final_lr_ratio=DEFAULT_FINAL_LR_RATIO).changed_from_default()


def test_resume_keeps_the_checkpoints_tail_unless_one_is_given():
    plan = CyclePlan(base_lr=(0.01,), max_lr=(0.1,), group_counts=(1,), step_size_up=4, step_size_down=4,
                     final_lr_ratio=0.1, total_steps=16)
    assert reconcile(plan, CycleSettings(base_lr=0.01, max_lr=0.1))[0].final_lr_ratio == 0.1  # automatic: kept
    new, messages = reconcile(plan, CycleSettings(final_lr_ratio=1.0))
    assert new.final_lr_ratio == 1.0 and "`final_lr_ratio`: the checkpoint has 0.1" in messages[0]


# ------------------------------------------------------------------ the tail of a run that ends mid-cycle
@settings(max_examples=80, deadline=None)
@given(up=st.integers(1, 20), down=st.integers(1, 20), total=st.integers(1, 120), ratio=st.floats(1e-3, 0.99),
       mode=st.sampled_from(["triangular", "triangular2"]))
def test_the_tail_ends_any_run_at_its_ratio_falling_all_the_way(up, down, total, ratio, mode):
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=up, step_size_down=down, mode=mode)
    start = max(0, total - down)
    tail = [cyclic_lr(t, total_steps=total, final_lr_ratio=ratio, **kwargs) for t in range(total + 1)]
    assert tail[: start + 1] == [cyclic_lr(t, **kwargs) for t in range(start + 1)]  # bitwise before the tail
    assert tail[start:] == sorted(tail[start:], reverse=True)  # then down, all the way
    assert tail[total] == pytest.approx(0.01 * ratio)  # wherever the cycle would have been


def test_the_tail_of_a_run_ending_at_a_cycle_end_is_its_last_falling_half():
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=5, step_size_down=5)
    old_floor = [0.1 ** min(1.0, max(0, t - 15) / 5) for t in range(21)]
    expected = [0.01 * f + (0.1 - 0.01 * f) * (cyclic_lr(t, base_lr=0, max_lr=1, step_size_up=5)) for t, f in
                zip(range(21), old_floor)]
    got = [cyclic_lr(t, total_steps=20, final_lr_ratio=0.1, **kwargs) for t in range(21)]
    assert got == pytest.approx(expected, rel=1e-12)  # the tail as it was: the floor anneals in the last fall


# ------------------------------------------------------------------ the startup line
def plan(**kwargs):
    values = dict(base_lr=(0.01,), max_lr=(0.1,), group_counts=(1,), step_size_up=48, step_size_down=48,
                  total_steps=128)
    values.update(kwargs)
    return CyclePlan(**values)


def test_the_startup_line_says_where_each_run_ends():
    assert "the LR is 0.07, not base_lr (its cycles of 96 steps end at steps 96 and 192)" in describe(plan())
    assert "annealing" not in describe(plan())
    assert "ending at base_lr after 2 whole cycle(s) (192 optimizer steps)" in describe(plan(total_steps=192))
    assert "(steps 144-192: its last falling half)" in describe(plan(total_steps=192, final_lr_ratio=0.1))
    line = describe(plan(final_lr_ratio=0.1))
    assert "annealing to base_lr x 0.1 at the end (steps 80-128: its cycles of 96 steps do not fill the run's" \
           " 128, so the tail falls from the cycle's LR 0.04 at step 80)" in line
    assert run_end(plan(total_steps=None), 0) == ""
    assert "set by the custom scale_fn" in describe(plan(custom_scale_fn=True))
    groups = plan(base_lr=(0.01, 0.001), max_lr=(0.1, 0.01), group_counts=(2,))
    assert "the LR is [0.07, 0.007]" in describe(groups)


# ------------------------------------------------------------------ per-optimizer cycles
def derived(**kwargs):
    values = dict(step_size_up=20, step_size_down=20, steps_per_epoch=10, total_steps=40, half_cycle_epochs=2.0,
                  base_lr=(0.01, 0.002), max_lr=(0.1, 0.02), group_counts=(1, 1))
    return plan(**{**values, **kwargs})


def test_measured_rates_give_each_optimizer_its_own_cycle():
    new = measured_cycles(derived(), CycleSettings(), [10, 5])
    assert new.optimizer_cycles == ((20, 20, 10, 40), (10, 10, 5, 20))
    assert [new.schedule(None, i).lr(new.cycle_of(i)[3], 0.01, 0.1) for i in (0, 1)] == [0.01, 0.01]
    line = describe(new)
    assert "optimizer 0: step_size_up=20" in line and "optimizer 1: step_size_up=10, step_size_down=10" in line
    assert measured_cycles(derived(), CycleSettings(), [10, 10]) is None  # same rate: nothing changes
    assert measured_cycles(derived(), CycleSettings(), [10, 0]) is None  # an optimizer that never stepped
    assert measured_cycles(derived(half_cycle_epochs=None), CycleSettings(), [10, 5]) is None  # given step sizes
    assert scale_totals(new, 80) == ((20, 20, 10, 80), (10, 10, 5, 40))


def test_per_optimizer_cycles_are_checkpoint_state_and_older_states_still_load():
    new = measured_cycles(derived(start_step=12), CycleSettings(), [10, 5])
    state = new.to_state([7, 3])
    assert state["plan"]["optimizer_cycles"] == [[20, 20, 10, 40], [10, 10, 5, 20]]
    assert CyclePlan.from_state(state) == (new, [7, 3])
    for key in ("optimizer_cycles", "start_step"):  # a version-2 state saved before these keys existed
        state["plan"].pop(key)
    old, _ = CyclePlan.from_state(state)
    assert old.optimizer_cycles is None and old.start_step == 0
    state["plan"]["optimizer_cycles"] = [[20, 20, 10, 40]]
    with pytest.raises(ValueError, match=r"`plan.optimizer_cycles` must be one row per optimizer \(2\)"):
        CyclePlan.from_state(state)
    state["plan"]["optimizer_cycles"] = [[20, 20, 10, 40], [10, 0, 5, 20]]
    with pytest.raises(ValueError, match=r"`plan.optimizer_cycles\[1\]` must be"):
        CyclePlan.from_state(state)


def test_a_new_cycle_on_resume_drops_the_measured_per_optimizer_cycles():
    measured = measured_cycles(derived(), CycleSettings(), [10, 5])
    again, _ = reconcile(measured, CycleSettings(base_lr=[0.01, 0.002], max_lr=[0.1, 0.02], half_cycle_epochs=1))
    assert again.step_size_up == 10 and again.optimizer_cycles is None  # measured again in the next whole epoch
    same, _ = reconcile(measured, CycleSettings())
    assert same.optimizer_cycles == measured.optimizer_cycles
