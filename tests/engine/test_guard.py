"""The divergence guard's pure parts: settings, the decision rule, the plan's v3 fields, the kept good state, and
the DDP decision (two real gloo processes, no Lightning: fast)."""

from __future__ import annotations

import math
import multiprocessing
import os
import re
from typing import Any

import pytest
import torch
from processes import free_port

from lightning_clr import ArgumentError, CyclicLearningRate, DivergenceGuard
from lightning_clr.engine._divergence import DivergenceRule
from lightning_clr.engine._guard import GoodState, Guard, check_state
from lightning_clr.engine._plan import STATE_VERSION, CyclePlan


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("field, value", [
    ("enabled", "no"), ("enabled", 1), ("check_every", 0), ("check_every", 2.5), ("threshold", 1.0),
    ("threshold", math.inf), ("backoff_factor", 0.0), ("backoff_factor", 1.0), ("max_backoffs", -1),
    ("max_backoffs", True), ("snapshot_on_cpu", "yes"),
])
def test_bad_guard_settings_raise_naming_the_field(field, value):
    with pytest.raises(ArgumentError) as info:
        DivergenceGuard(**{field: value})
    assert info.value.argument == f"guard.{field}" and info.value.value is value or info.value.value == value
    with pytest.raises(ArgumentError, match=rf"`guard.{field}` must be"):
        CyclicLearningRate(guard=DivergenceGuard(**{field: value}))


@pytest.mark.parametrize("value", [True, {"check_every": 3}, "off"])
def test_guard_must_be_a_divergence_guard(value):
    with pytest.raises(ArgumentError) as info:
        CyclicLearningRate(guard=value)
    assert info.value.argument == "guard"


def test_on_by_default_only_when_the_range_test_ran():
    assert DivergenceGuard().active(range_test_ran=True) and not DivergenceGuard().active(range_test_ran=False)
    assert DivergenceGuard(enabled=True).active(False) and not DivergenceGuard(enabled=False).active(True)


# ------------------------------------------------------------------ the rule
def test_a_non_finite_loss_is_a_divergence_from_the_first_window_on():
    for bad in (math.nan, math.inf, -math.inf):
        assert "non-finite" in DivergenceRule().check([1.0, bad, 1.0])


def test_a_collapse_to_chance_is_caught_and_a_tenfold_rise_near_zero_is_not():
    rule = DivergenceRule(threshold=4.0)
    for window in ([2.3] * 10, [0.5] * 10, [0.02] * 10):  # start 2.3, best 0.02
        assert rule.check(window) is None
    assert rule.check([0.2] * 10) is None  # x10, but far below halfway back to 2.3 (1.16): the cycle's peak
    assert rule.check([0.03] * 10) is None
    assert "rose from 0.02 to 1.5" in rule.check([1.5] * 10)  # past halfway back: diverged


def test_a_rise_within_the_noise_of_the_passed_windows_is_not_a_divergence():
    noisy = [0.1, 1.0] * 5  # every batch 10x off the last (batches of 8)
    rule = DivergenceRule(threshold=2.0)
    rule.check([3.0, 2.0] * 5)
    rule.check(noisy)
    assert rule.sigma > 1.0
    assert rule.check([0.9, 2.7] * 5) is None  # median x5.5 the best, within the noise band of the windows before
    clean = DivergenceRule(threshold=2.0)
    clean.check([3.0] * 10)
    clean.check([0.3] * 10)
    assert clean.check([1.8] * 10) is not None  # the same rise on a clean curve is a divergence


@pytest.mark.parametrize("window", [[2.3, 0.7, 1.9, 0.2, 3.3, 0.5], [2.3, 0.7, 1.9, 0.2, 3.3, 1e-31, 0.5],
                                    [1.0, -0.5, 2.0, 0.1, 0.3], [0.4] * 6])
def test_the_rules_noise_is_the_range_tests_noise_of_the_same_losses(window):
    """The rule reuses the logs it takes for the level when it can (every loss > 0 and not clamped); the noise
    it keeps must still be exactly noise_sigma of the raw losses, in whichever space that reads them."""
    from lightning_clr.range_test._smoothing import noise_sigma

    rule = DivergenceRule()
    rule.check([1.0] * 4)  # log space from here on (the first window's losses are all > 0)
    assert rule.check(window) is None
    assert rule.sigma == noise_sigma(window)


def test_a_window_whose_median_magnitude_is_a_denormal_keeps_a_finite_state_that_loads():
    """Found in review: losses of mostly 0 with a denormal median made the scale 5e-324, every level infinite and
    the noise NaN, so the checkpoint's guard state was refused on resume and no state was ever calm again."""
    rule = DivergenceRule()
    assert rule.check([2.28, 5e-324, 0.0, 0.26, 0.46, 0.0, 0.0]) is None
    assert rule.scale == 1.0 and all(math.isfinite(v) for v in (rule.start, rule.best, rule.sigma))
    assert rule.check([0.3, 0.0, 0.2, 0.1, 0.0, 0.4, 0.2]) is None and rule.calm
    DivergenceRule().load(rule.state())  # a resume reads it back


def test_losses_below_zero_are_judged_in_linear_units():
    rule = DivergenceRule(threshold=4.0)
    rule.check([-1.0, -1.1, -0.9])
    assert rule.space == "linear" and rule.scale == 1.0
    rule.check([-3.0, -3.1, -2.9])
    assert rule.check([-2.5] * 3) is None
    assert rule.check([5.0] * 3) is not None


def test_a_blown_up_last_loss_passes_the_window_but_is_not_calm():
    rule = DivergenceRule()
    rule.check([2.0] * 8)
    rule.check([0.5] * 8)
    assert rule.check([0.5] * 7 + [500.0]) is None and not rule.calm  # the median ignores it: the state is not kept
    assert rule.check([0.5] * 8) is None and rule.calm


def test_the_rules_state_round_trips_and_a_bad_one_names_the_key():
    rule = DivergenceRule()
    rule.check([2.0, 2.2, 1.9])
    rule.check([1.0, 1.1, 0.9])
    again = DivergenceRule()
    again.load(rule.state())
    assert again.state() == rule.state()
    assert check_state({"rule": rule.state(), "pending": [1.0, 2.0]}) is not None
    for state, key in [({"rule": {**rule.state(), "best": math.nan}, "pending": []}, "guard.best"),
                       ({"rule": {**rule.state(), "space": "os.system"}, "pending": []}, "guard.space"),
                       ({"rule": rule.state(), "pending": ["x"]}, "guard.pending"),
                       ({"rule": rule.state()}, "guard")]:
        with pytest.raises(ValueError, match=rf"state is invalid: `{key}` must be"):
            check_state(state)


# ------------------------------------------------------------------ the plan (checkpoint state v3)
PLAN = CyclePlan(base_lr=(0.01, 0.1), max_lr=(0.04, 0.4), group_counts=(2,), step_size_up=4, step_size_down=4)


def test_a_backed_off_plan_keeps_every_ratio_and_round_trips():
    record = {"step": 12, "reason": "a non-finite training loss (nan)", "lr_scale": 0.25}
    plan = PLAN.replace(lr_scale=0.25, interventions=(record,))
    assert plan.effective_base_lr == (0.0025, 0.025) and plan.effective_max_lr == (0.01, 0.1)
    state = plan.to_state([13])
    assert state["version"] == STATE_VERSION == 3
    assert CyclePlan.from_state(state) == (plan, [13])


def test_a_version_2_state_loads_without_the_guards_fields():
    state = PLAN.to_state([5])
    for key in ("lr_scale", "interventions"):
        del state["plan"][key]
    state["version"] = 2
    plan, steps = CyclePlan.from_state(state)
    assert plan == PLAN and plan.lr_scale == 1.0 and plan.interventions == () and steps == [5]


@pytest.mark.parametrize("edit, key", [
    (lambda p: p.update(lr_scale=2.0), "plan.lr_scale"),
    (lambda p: p.update(lr_scale=0.0), "plan.lr_scale"),
    (lambda p: p.update(interventions=[{"step": 1}]), "plan.interventions[0]"),
    (lambda p: p.update(interventions=[{"step": -1, "reason": "", "lr_scale": 0.5}]), "plan.interventions[0].step"),
    (lambda p: p.update(interventions=[{"step": 1, "reason": 3, "lr_scale": 0.5}]), "plan.interventions[0].reason"),
    (lambda p: p.update(interventions="evil"), "plan.interventions"),
])
def test_a_tampered_guard_record_names_the_key(edit, key):
    state = PLAN.to_state([1])
    edit(state["plan"])
    with pytest.raises(ValueError, match=re.escape(f"state is invalid: `{key}` must be")):
        CyclePlan.from_state(state)


# ------------------------------------------------------------------ the kept good state
@pytest.mark.parametrize("device", [None, "cpu"])
def test_the_good_state_restores_model_optimizer_and_scaler_in_place(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def step() -> None:
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()

    step()
    scaler.scale(torch.tensor(1.0))  # the scale is made on first use
    good = GoodState([model], [opt], scaler, device)
    good.capture()
    tensors = [t.clone() for t in [*model.parameters(), *model.buffers()]]
    adam = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    ids = [id(t) for t in model.parameters()]
    for _ in range(3):
        step()
    scaler._scale = torch.tensor(7.0)
    opt.param_groups[0]["lr"] = 123.0
    good.restore()
    assert all(torch.equal(a, b) for a, b in zip([*model.parameters(), *model.buffers()], tensors))
    assert [id(t) for t in model.parameters()] == ids  # the same tensors: the optimizer's references hold
    for p, s in opt.state.items():
        assert all(torch.equal(v, adam[id(p)][k]) for k, v in s.items())
    assert opt.param_groups[0]["lr"] == 0.01 and float(scaler._scale) == 1024.0
    step()  # training goes on from there
    good.capture()  # capturing again reuses the copy's memory
    assert all(t.device.type == "cpu" for t in good.saved_tensors())


def test_restoring_an_empty_optimizer_state_clears_it():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    good = GoodState([model], [opt])
    good.capture()
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert opt.state
    good.restore()
    assert not opt.state


# ------------------------------------------------------------------ DDP: the same decision on every rank
def _rank(rank: int, port: int, queue: Any) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        guard = Guard(DivergenceGuard(check_every=4), PLAN)
        decisions = []
        for step in range(1, 25):
            loss = 2.0 / step
            if rank == 1 and step > 16:
                loss = 50.0  # only rank 1's data blows up
            guard._losses.append(torch.tensor(loss))
            if step % 4 == 0:
                decisions.append((step, guard.decide(step, world_size=2)))
        queue.put((rank, decisions))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_decide_alike_when_one_ranks_loss_diverges():
    ctx = multiprocessing.get_context("spawn" if os.name != "posix" else "fork")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results[0] == results[1]
    verdicts = [(step, reason is not None) for step, reason in results[0]]
    assert verdicts == [(4, False), (8, False), (12, False), (16, False), (20, True), (24, True)]
    assert "rose from" in results[0][4][1]  # the ranks' mean (26) judged, not rank 0's own 0.1
