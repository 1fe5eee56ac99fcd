"""The cycle-end pruners on a real in-memory Optuna study: trials report only at their cycle ends (the epoch as
step), and are compared at those."""

from __future__ import annotations

import optuna
import pytest

from lightning_clr import ArgumentError
from lightning_clr.tuning import CycleEndMedianPruner, CycleHalvingPruner

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _finish(study: optuna.Study, reports: dict[int, float]) -> None:
    trial = study.ask()
    for epoch, value in reports.items():
        trial.report(value, step=epoch)
    study.tell(trial, list(reports.values())[-1])


def _judge(study: optuna.Study, reports: dict[int, float]) -> bool:
    trial = study.ask()
    for epoch, value in reports.items():
        trial.report(value, step=epoch)
    pruned = trial.should_prune()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
               values=None if pruned else list(reports.values())[-1])
    return pruned


def test_the_median_pruner_compares_at_no_later_epoch_than_the_trials_cycle_end() -> None:
    study = optuna.create_study(pruner=CycleEndMedianPruner(n_startup_trials=2))
    _finish(study, {4: 1.0, 8: 0.2})  # short cycles: good late, at epoch 8
    _finish(study, {4: 1.2, 8: 0.3})
    # At epoch 4 a trial is compared with the others' values up to epoch 4 (median 1.1), not their later 0.2 / 0.3.
    assert not _judge(study, {4: 0.5})
    assert _judge(study, {4: 1.5})
    assert _judge(study, {8: 0.9})  # at epoch 8: against the best up to 8 (median 0.25)
    assert _judge(study, {8: float("nan")})  # no finite value at all


def test_the_median_pruner_waits_for_its_startup_trials() -> None:
    study = optuna.create_study(pruner=CycleEndMedianPruner(n_startup_trials=2))
    _finish(study, {4: 0.1})
    assert not _judge(study, {4: 9.0})  # one completed trial: too early to judge
    with pytest.raises(ValueError):
        CycleEndMedianPruner(n_min_trials=0)


def test_the_halving_pruner_keeps_the_best_third_at_a_rung() -> None:
    study = optuna.create_study(pruner=CycleHalvingPruner(min_resource=4, reduction_factor=3))
    for value in (0.5, 0.6):
        _finish(study, {4: value})
    assert not _judge(study, {4: 0.4})  # the best of three at rung 4
    assert _judge(study, {4: 0.7})  # the worst of four
    assert not _judge(study, {2: 9.0})  # no rung reached yet (rung 0 is epoch 4)


def test_the_halving_pruner_validates_its_arguments_by_name() -> None:
    with pytest.raises(ArgumentError) as info:
        CycleHalvingPruner(reduction_factor=1)
    assert info.value.argument == "reduction_factor"
