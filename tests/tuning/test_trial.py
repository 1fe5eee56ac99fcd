"""One trial's pieces, in a real fit: the study's shared bounds found once (or taken from the study), and a
storage fault told apart from the trial's own error."""

from __future__ import annotations

import optuna
from helpers import TinyModel, loader, trainer

from lightning_clr import CyclicLearningRate, RangeTestConfig
from lightning_clr.tuning._storage import StorageError
from lightning_clr.tuning._trial import BoundsCallback, _storage_fault

optuna.logging.set_verbosity(optuna.logging.WARNING)
QUICK = RangeTestConfig(num_steps=12, save=False, progress_bar=False)


def test_the_bounds_fit_runs_the_range_test_stores_the_bounds_and_trains_no_step() -> None:
    study = optuna.create_study()
    clr = CyclicLearningRate(range_test=QUICK)
    fit = trainer(callbacks=[clr, BoundsCallback(clr, None, study, None, None)], max_epochs=3, min_epochs=2)
    fit.fit(TinyModel(), loader())
    assert fit.global_step == 0  # stopped before the first training step, min_epochs notwithstanding
    assert clr.range_test_result is not None and clr.plan is not None and clr.plan.steps_per_epoch == 8
    assert study.user_attrs["clr_base_lr"] == [clr.base_lr] and study.user_attrs["clr_max_lr"] == [clr.max_lr]
    assert study.user_attrs["clr_range_test"]["rule"] == clr.range_test_result.rule


def test_bounds_already_in_the_study_skip_the_range_test() -> None:
    study = optuna.create_study()
    clr = CyclicLearningRate(range_test=QUICK)
    fit = trainer(callbacks=[clr, BoundsCallback(clr, (0.01, 0.1), study, None, None)], max_epochs=1)
    fit.fit(TinyModel(), loader())
    assert clr.range_test_result is None and (clr.base_lr, clr.max_lr) == (0.01, 0.1)
    assert "clr_base_lr" not in study.user_attrs


def test_a_storage_fault_is_found_in_the_exception_chain_or_in_rank_zeros_message() -> None:
    try:
        try:
            raise StorageError("journal 'x.journal': disk full")
        except StorageError as err:
            raise RuntimeError("the fit failed") from err
    except RuntimeError as outer:
        assert _storage_fault(outer) == "journal 'x.journal': disk full"
    broadcast = RuntimeError("StorageError on global rank 0: postgresql://...: connection refused")
    assert _storage_fault(broadcast) == "postgresql://...: connection refused"
    assert _storage_fault(ValueError("the model's own bug")) is None
