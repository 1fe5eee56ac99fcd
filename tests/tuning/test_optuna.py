"""The canary of ``lightning_clr.tuning._optuna``: Optuna's private members the tuner needs, reached for real on the
installed Optuna (the floors job runs it on the lowest declared one)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from lightning_clr._lightning import PrivateMemberError
from lightning_clr.tuning import _optuna as seam


def test_every_seam_function_is_tested_here() -> None:
    source = open(__file__, encoding="utf-8").read()
    assert not [name for name in seam.__all__ if f"seam.{name}(" not in source]


def test_the_storage_and_trial_ids_of_a_real_study() -> None:
    assert seam.import_optuna() is optuna
    study = optuna.create_study()
    study.tell(study.ask(), 1.0)
    trial = study.ask()
    storage = seam.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    frozen = storage.get_trial(seam.trial_id_of(trial))
    assert (frozen.number, frozen.state) == (1, TrialState.RUNNING)
    assert seam.trial_id_of(frozen) == seam.trial_id_of(trial)
    assert seam.trial_id_of(study.trials[0]) != seam.trial_id_of(trial)


def test_a_missing_member_is_named() -> None:
    with pytest.raises(PrivateMemberError, match=r"optuna\.Study\._storage"):
        seam.storage_of(object.__new__(optuna.Study))
    with pytest.raises(PrivateMemberError, match=r"_trial_id"):
        seam.trial_id_of(object())
