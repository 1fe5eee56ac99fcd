"""CyclePlan as checkpoint state, and the resume rules of `reconcile`, without a Trainer (the Trainer-level
tests with real checkpoint files are in tests/callback/test_resume.py)."""

from __future__ import annotations

import json

import pytest

from lightning_clr import CyclePlan, CycleSettings
from lightning_clr.engine._resume import reconcile


def plan(**kw):
    base = dict(base_lr=(0.01, 0.001), max_lr=(0.1, 0.01), group_counts=(2,), step_size_up=4, step_size_down=5,
                mode="triangular2", steps_per_epoch=3, half_cycle_epochs=1.5)
    return CyclePlan(**{**base, **kw})


def test_state_is_strict_json_and_round_trips():
    p = plan(range_test={"base_lr": 0.01, "lrs": [1e-3]})
    text = json.dumps(p.to_state([7]), allow_nan=False)
    assert CyclePlan.from_state(json.loads(text)) == (p, [7])


def test_defaults_keep_the_checkpoint():
    p = plan()
    assert reconcile(p, CycleSettings()) == (p, [])


def test_explicit_values_replace_and_say_so():
    new, messages = reconcile(plan(), CycleSettings(max_lr=[0.2, 0.02], mode="exp_range", gamma=0.99))
    assert new.max_lr == (0.2, 0.02) and new.mode == "exp_range" and new.gamma == 0.99
    assert any("`mode`: the checkpoint has triangular2, the callback was given exp_range" in m for m in messages)
    assert any("`max_lr`" in m for m in messages)


def test_half_cycle_epochs_is_rederived_from_the_plans_epoch_length():
    new, messages = reconcile(plan(), CycleSettings(half_cycle_epochs=3.0))
    assert (new.step_size_up, new.step_size_down) == (9, 9)
    assert any("`half_cycle_epochs`" in m for m in messages)


def test_a_given_bound_that_contradicts_the_checkpoint_is_refused():
    with pytest.raises(ValueError, match=r"`base_lr` must be consistent with the checkpoint's other bound"):
        reconcile(plan(), CycleSettings(base_lr=0.05))  # above the second group's max 0.01


def test_a_custom_scale_fn_must_be_passed_again():
    with pytest.raises(ValueError, match="never imports code"):
        reconcile(plan(custom_scale_fn=True, scale_fn_path="os:close"), CycleSettings())
