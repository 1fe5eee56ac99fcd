"""DistinctHalfCycleSampler: a real TPE/random sampler underneath, real studies, and one real tuner run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from lightning_clr.tuning._sampler import DistinctHalfCycleSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
H = {"half_cycle_epochs": IntDistribution(1, 11)}


def _run(sampler: optuna.samplers.BaseSampler, n: int, space: dict[str, Any] = H) -> list[Any]:
    """Ask-and-tell ``n`` trials whose value depends on nothing: TPE's favourite stays where its first good draw was."""
    study = optuna.create_study(sampler=sampler)
    for _ in range(n):
        trial = study.ask(space)
        study.tell(trial, 1.0 if trial.params["half_cycle_epochs"] != 5 else 0.0)
    return study.get_trials()


def test_plain_tpe_repeats_a_value_that_the_wrapper_does_not() -> None:
    plain = [t.params["half_cycle_epochs"] for t in _run(optuna.samplers.TPESampler(seed=0, n_startup_trials=2), 11)]
    assert len(set(plain)) < len(plain)  # what the wrapper exists for: TPE spends trials on repeats
    wrapped = _run(DistinctHalfCycleSampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=2), seed=0), 11)
    assert sorted(t.params["half_cycle_epochs"] for t in wrapped) == list(range(1, 12))  # each value once


def test_a_repeat_becomes_the_nearest_untried_value() -> None:
    study = optuna.create_study(sampler=DistinctHalfCycleSampler(optuna.samplers.RandomSampler(seed=0), seed=0))
    for h in (1, 2, 3, 4, 5, 6, 7, 8, 9):  # every value but 10 and 11 tried
        study.add_trial(optuna.trial.create_trial(params={"half_cycle_epochs": h}, distributions=H, value=1.0))
    trial = study.ask(H)
    assert trial.params["half_cycle_epochs"] in (10, 11)
    study.tell(trial, 1.0)
    second = study.ask(H)
    assert {trial.params["half_cycle_epochs"], second.params["half_cycle_epochs"]} == {10, 11}
    study.tell(second, 1.0)
    third = study.ask(H)  # everything tried: the base sampler's suggestion is kept
    assert 1 <= third.params["half_cycle_epochs"] <= 11


def test_failed_trials_do_not_count_as_tried_but_running_and_queued_ones_do() -> None:
    study = optuna.create_study(sampler=DistinctHalfCycleSampler(optuna.samplers.RandomSampler(seed=1), seed=1))
    space = {"half_cycle_epochs": IntDistribution(1, 3)}
    study.add_trial(optuna.trial.create_trial(params={"half_cycle_epochs": 1}, distributions=space,
                                              state=TrialState.FAIL))
    running = study.ask(space)  # RUNNING, e.g. another worker's trial
    study.enqueue_trial({"half_cycle_epochs": 3 if running.params["half_cycle_epochs"] != 3 else 2})
    queued = study.ask(space)  # takes the queued trial (fixed params, not sampled)
    third = study.ask(space)
    values = [t.params["half_cycle_epochs"] for t in (running, queued, third)]
    assert sorted(values) == [1, 2, 3]  # 1 failed, so it is the value left to try


def test_the_same_half_cycle_with_another_mode_is_not_a_repeat() -> None:
    space = {"mode": CategoricalDistribution(["triangular", "triangular2"]), **H}
    study = optuna.create_study(sampler=DistinctHalfCycleSampler(optuna.samplers.RandomSampler(seed=0), seed=0))
    for h in range(1, 12):
        study.add_trial(optuna.trial.create_trial(params={"mode": "triangular", "half_cycle_epochs": h},
                                                  distributions=space, value=1.0))
    seen = set()
    for _ in range(11):
        trial = study.ask(space)
        if trial.params["mode"] == "triangular2":
            assert trial.params["half_cycle_epochs"] not in seen
            seen.add(trial.params["half_cycle_epochs"])
        study.tell(trial, 1.0)
    assert seen  # triangular2 got half-cycles that triangular already had


@pytest.mark.parametrize("distinct", [True, False])
def test_tuner_trials_are_distinct_unless_turned_off(tmp_path: Path, distinct: bool) -> None:
    from tuning_helpers import tune

    from lightning_clr.schedule import whole_cycle_count

    # every trial trains the 12-epoch budget: half-cycles 1..6 fit 6, 3, 2, 2, 1 and 1 whole cycles, 4 schedules
    result = tune(tmp_path, n_trials=6, max_epochs=12 if distinct else 2, min_half_cycle_epochs=1,
                  max_half_cycle_epochs=6, pruner="none", n_startup_trials=1, distinct=distinct, seed=3)
    hs = [t.params["half_cycle_epochs"] for t in result.study.get_trials()]
    if distinct:
        assert sorted({whole_cycle_count(12, h) for h in hs[:4]}) == [1, 2, 3, 6]  # every schedule before a repeat
    else:
        assert len(set(hs)) < 6  # plain TPE repeats here; if this ever changes, the test above proves nothing


def test_with_a_budget_half_cycles_of_the_same_schedule_count_as_tried() -> None:
    """With 48 epochs, h = 10, 11 and 12 all train two cycles of 24: after h = 12, neither 10 nor 11 runs."""
    space = {"half_cycle_epochs": IntDistribution(1, 12)}

    def next_half_cycle(seed: int, budget: Any) -> int:
        sampler = DistinctHalfCycleSampler(optuna.samplers.RandomSampler(seed=seed), seed=seed, budget_epochs=budget)
        study = optuna.create_study(sampler=sampler)
        for h in (1, 2, 3, 4, 5, 6, 12):  # 24, 12, 8, 6, 5, 4 and 2 cycles in 48 epochs; untried: 3 (h = 7, 8, 9)
            study.add_trial(optuna.trial.create_trial(params={"half_cycle_epochs": h}, distributions=space, value=1.0))
        return study.ask(space).params["half_cycle_epochs"]

    assert {next_half_cycle(seed, 48) for seed in range(10)} <= {7, 8, 9}
    assert {next_half_cycle(seed, None) for seed in range(10)} & {10, 11}  # without the budget: the same schedule
