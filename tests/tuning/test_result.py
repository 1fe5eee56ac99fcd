"""What the tuner returns, read off a real in-memory Optuna study: the best setting judged by the mean of its
runs, the trial table, the summary and the callback to train with."""

from __future__ import annotations

import optuna
import pytest

from lightning_clr import CyclicLearningRate
from lightning_clr.tuning._result import result_of

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(runs: list[tuple[int, float]]) -> optuna.Study:
    """A study with one completed trial per ``(half_cycle_epochs, value)``, as the tuner records them."""
    study = optuna.create_study()
    space = {"half_cycle_epochs": optuna.distributions.IntDistribution(1, 8)}
    for h, value in runs:
        study.add_trial(optuna.trial.create_trial(
            params={"half_cycle_epochs": h}, distributions=space, value=value,
            user_attrs={"steps_per_epoch": 5, "mode": "triangular", "max_lr": 0.5, "base_lr": 0.1,
                        "history": {str(2 * h): value}},
        ))
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # a failed trial is listed, never best
    return study


def test_a_setting_run_twice_is_judged_by_its_mean_not_its_luckiest_run() -> None:
    study = _study([(2, 0.30), (2, 0.50), (4, 0.35)])  # h=2: a lucky 0.30 but a mean of 0.40
    result = result_of(study, "val_loss", "minimize", 12, (0.1, 0.5))
    assert result.best_half_cycle_epochs == 4 and result.best_value == pytest.approx(0.35)
    assert result.best_step_size_up == 20 and result.steps_per_epoch == 5 and result.best_max_lr == 0.5
    assert [v for _, v in result.best_so_far()] == pytest.approx([0.30, 0.40, 0.35])
    maximize = result_of(study, "val_acc", "maximize", 12, (0.1, 0.5))
    assert maximize.best_half_cycle_epochs == 2 and maximize.best_value == pytest.approx(0.40)


def test_the_summary_lists_every_trial_and_the_best_and_the_callback_trains_with_it() -> None:
    result = result_of(_study([(2, 0.4), (4, 0.35)]), "val_loss", "minimize", 12, (0.1, 0.5))
    rows = result.trials()
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert rows[1]["step_size_up"] == 20 and rows[1]["epochs"] == 8
    summary = result.summary()
    assert "Best: half-cycle 4 epochs, trained as 20 optimizer steps" in summary and "12 epochs trained" in summary
    clr = result.callback(mode="triangular2")
    assert isinstance(clr, CyclicLearningRate)
    assert (clr.base_lr, clr.max_lr, clr.half_cycle_epochs, clr.mode) == (0.1, 0.5, 4.0, "triangular2")


def test_no_completed_trial_means_no_best_and_no_callback() -> None:
    study = optuna.create_study()
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    result = result_of(study, "val_loss", "minimize", 3, (0.1, 0.5))
    assert result.best_half_cycle_epochs is None and result.base_lr == 0.1
    assert "No trial completed." in result.summary()
    with pytest.raises(ValueError, match="no completed trial"):
        result.callback()
