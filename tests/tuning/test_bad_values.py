"""Values the tuner used to accept and then failed far from (issue 21, items 7 and 10): bounds stored in the
study, heartbeat and grace periods, the search grid, the budget. Each is refused by name before any trial."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from tuning_helpers import tune

from lightning_clr._validation import ArgumentError
from lightning_clr.tuning import SearchSpace, StudyConfig
from lightning_clr.tuning._storage import StorageError


def _study_with(storage: str, base: Any, high: Any) -> optuna.Study:
    study = optuna.create_study(study_name="bad", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    study.set_user_attr("clr_base_lr", base)
    study.set_user_attr("clr_max_lr", high)
    return study


@pytest.mark.parametrize(
    ("base", "high", "key", "shown"),
    [
        (math.nan, 0.1, "clr_base_lr", "nan"),
        (-1.0, 0.1, "clr_base_lr", "-1.0"),
        (0.0, 0.1, "clr_base_lr", "0.0"),
        (0.01, 1e308, "clr_max_lr", "1e+308"),
        ("0.01", 0.1, "clr_base_lr", "'0.01'"),
        (0.01, 0.001, "clr_max_lr", "0.001"),  # max < base: refused, not silently changed
    ],
)
def test_bounds_stored_in_the_study_are_validated_by_name(
    tmp_path: Path, base: Any, high: Any, key: str, shown: str
) -> None:
    storage = str(tmp_path / "bad.journal")
    study = _study_with(storage, base, high)
    with pytest.raises(StorageError, match=rf"'{key}' must be .*, got {re.escape(shown)}") as info:
        tune(tmp_path, n_trials=1, base_lr=None, max_lr=None, storage=storage, study_name="bad")
    assert "\n" not in str(info.value)
    assert study.trials == []  # refused before any trial was asked for


@pytest.mark.parametrize(
    ("build", "kwargs", "argument"),
    [
        (StudyConfig, {"heartbeat_interval": 1e30}, "study.heartbeat_interval"),
        (StudyConfig, {"heartbeat_interval": 5e-324}, "study.heartbeat_interval"),
        (StudyConfig, {"grace_period": 1e300}, "study.grace_period"),
        (StudyConfig, {"storage_patience": -3.0}, "study.storage_patience"),
        (StudyConfig, {"storage_patience": math.inf}, "study.storage_patience"),
        (StudyConfig, {"storage_patience": "5"}, "study.storage_patience"),
        (SearchSpace, {"max_half_cycle_epochs": 10**30}, "search.max_half_cycle_epochs"),
        (SearchSpace, {"max_max_lr_scale": 1e308}, "search.max_max_lr_scale"),
        (SearchSpace, {"min_max_lr_scale": 5e-324}, "search.min_max_lr_scale"),
    ],
)
def test_settings_out_of_a_sane_range_are_refused_by_name(build: Any, kwargs: dict, argument: str) -> None:
    with pytest.raises(ArgumentError) as info:
        build(**kwargs)
    assert info.value.argument == argument


@pytest.mark.parametrize("value", [math.nan, 2.5, 10**30])
def test_trainer_kwargs_max_epochs_is_checked_even_when_max_epochs_is_given(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ArgumentError) as info:
        tune(tmp_path, n_trials=1, max_epochs=2, trainer_kwargs={"accelerator": "cpu", "max_epochs": value})
    assert info.value.argument == "trainer_kwargs['max_epochs']"
    assert not (tmp_path / "tuning").exists()  # nothing ran


def test_an_absurd_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError) as info:
        tune(tmp_path, n_trials=1, max_epochs=10**30)
    assert info.value.argument == "max_epochs"


# ---------------------------------------------------------------------------------------------- outputs (item 6)
def test_a_summary_that_cannot_be_written_warns_and_the_result_is_returned(tmp_path: Path) -> None:
    """An in-memory study used to be lost to an OSError from summary.txt after every trial had trained."""
    (tmp_path / "tuning" / "summary.txt").mkdir(parents=True)  # the file's name is taken: the write fails
    with pytest.warns(UserWarning, match=r"could not write '.*summary\.txt'"):
        result = tune(tmp_path, n_trials=2)
    assert len(result.study.trials) == 2 and result.best_half_cycle_epochs is not None


def test_an_output_dir_that_cannot_be_created_is_refused_before_any_trial(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="Not a directory") as info:
        tune(tmp_path, n_trials=1, output_dir="/dev/null/x")
    assert info.value.argument == "output.output_dir"


@pytest.mark.parametrize("name", ["base_lr", "max_lr"])
def test_a_huge_learning_rate_for_the_tuner_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArgumentError) as info:
        tune(tmp_path, n_trials=1, **{name: 1e308})
    assert info.value.argument == name and not (tmp_path / "tuning").exists()


@pytest.mark.parametrize(
    ("given", "stored", "key", "used"),
    [({"base_lr": 0.1, "max_lr": None}, (0.01, 0.04), "max_lr", 0.4),  # stored max below the given base
     ({"base_lr": None, "max_lr": 0.005}, (0.01, 0.04), "base_lr", 0.00125)],  # stored base above the given max
)
def test_a_stored_bound_on_the_wrong_side_of_a_given_one_is_replaced_with_a_warning(
    tmp_path: Path, given: dict, stored: tuple, key: str, used: float
) -> None:
    """Each stored bound is valid alone; against the bound the user gave, it is on the wrong side. The study's
    value is replaced by the range test's default ratio, as before, but no longer silently."""
    storage = str(tmp_path / "side.journal")
    _study_with(storage, *stored)
    other = "base_lr" if key == "max_lr" else "max_lr"
    with pytest.warns(UserWarning, match=rf"the study's {key} \[{stored[key == 'max_lr']}\] is on the wrong side of"
                      rf" the given {other} \[{given[other]}\].*using {key} = .*\[{used}\]"):
        result = tune(tmp_path, n_trials=1, storage=storage, study_name="bad", **given)
    (trial,) = result.study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert result.trials()[0]["max_lr"] == pytest.approx(0.4 if key == "max_lr" else 0.005)
