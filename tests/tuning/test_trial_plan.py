"""The tuner's data path: equal budgets for every trial, per-group bounds, the trial plan, and one range test
per study for the tuner and for a hand-written objective (real Trainers; the multi-worker cases run
tests/scripts/tune_worker.py through ``subprocess`` on a journal file and on the real PostgreSQL)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from optuna.trial import TrialState
from tuning_helpers import DM, PG_URL, Net, needs_pg, tune, worker

from lightning_clr import CyclePruningCallback, CyclicLearningRate, RangeTestConfig, suggest_cycle
from lightning_clr.tuning._storage import database_url

SMALL_TEST = RangeTestConfig(num_steps=12, save=False, progress_bar=False)


class Steps(pl.Callback):
    """Every trial's fit: optimizer steps, epochs and the bounds its CyclicLearningRate trained with."""

    fits: list[dict[str, Any]] = []

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clr = next(c for c in trainer.callbacks if isinstance(c, CyclicLearningRate))
        Steps.fits.append({"steps": trainer.global_step, "epochs": trainer.current_epoch, "up": clr.step_size_up,
                           "base_lr": clr.base_lr, "max_lr": clr.max_lr})


def _journal_study(path: Path, name: str, half_cycles: tuple[int, ...]) -> str:
    storage = str(path)
    study = optuna.create_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    for h in half_cycles:
        study.enqueue_trial({"half_cycle_epochs": h})
    return storage


# ---------------------------------------------------------------------------------------------- budgets
def test_every_trial_trains_the_same_optimizer_steps_whatever_its_half_cycle(tmp_path: Path) -> None:
    """Issue 21.3: with a budget of 4 epochs and half-cycles 1-3, h = 3 trained 6 epochs and the others 4."""
    Steps.fits.clear()
    storage = _journal_study(tmp_path / "s.journal", "budget", (1, 2, 3))
    result = tune(tmp_path, n_trials=3, max_epochs=4, max_half_cycle_epochs=3, storage=storage,
                  study_name="budget", warm_start=False, pruner="none",
                  trainer_kwargs={"accelerator": "cpu", "callbacks": [Steps()]})
    trials = result.study.get_trials()
    assert [t.params["half_cycle_epochs"] for t in trials] == [1, 2, 3]
    assert [f["steps"] for f in Steps.fits] == [16, 16, 16]  # 4 epochs of 4 steps, every trial
    assert [f["epochs"] for f in Steps.fits] == [4, 4, 4]
    assert all(t.user_attrs["epochs"] == 4 for t in trials)
    # the cycle fits the budget as CyclicLearningRate fits any run: whole cycles, at least one
    assert [f["up"] for f in Steps.fits] == [4, 8, 8]
    assert [t.user_attrs["step_size_up"] for t in trials] == [4, 8, 8]
    assert [r["step_size_up"] for r in result.trials()] == [4, 8, 8]  # what trained, not h x steps/epoch


def test_whole_cycle_epochs_is_one_function() -> None:
    from lightning_clr.schedule import whole_cycle_epochs

    assert [whole_cycle_epochs(6, h) for h in (1, 2, 3, 4)] == [6, 8, 6, 8]
    assert whole_cycle_epochs(1, 5) == 10  # at least one cycle


# ---------------------------------------------------------------------------------------------- groups
class TwoGroups(Net):
    """A backbone at 1e-4 and a head at 1e-3: the range test keeps their ratio."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([{"params": self.net[0].parameters(), "lr": 1e-4},
                                {"params": self.net[2].parameters(), "lr": 1e-3}])


def test_bounds_are_stored_and_applied_per_param_group(tmp_path: Path) -> None:
    """Issue 21.4: the study stored group 0's bounds as one float, so both groups trained with them."""
    Steps.fits.clear()
    result = tune(tmp_path, model=TwoGroups, n_trials=2, base_lr=None, max_lr=None, range_test=SMALL_TEST,
                  pruner="none", trainer_kwargs={"accelerator": "cpu", "callbacks": [Steps()]})
    attrs = result.study.user_attrs
    base, high = json.loads(json.dumps(attrs["clr_base_lr"])), attrs["clr_max_lr"]
    assert isinstance(base, list) and isinstance(high, list) and len(base) == len(high) == 2
    assert high[1] / high[0] == pytest.approx(10.0) and base[1] / base[0] == pytest.approx(10.0)
    for fit in Steps.fits:
        assert fit["base_lr"] == pytest.approx(base) and fit["max_lr"] == pytest.approx(high)
    for t in result.study.get_trials():
        assert t.user_attrs["base_lr"] == pytest.approx(base) and t.user_attrs["max_lr"] == pytest.approx(high)
    clr = result.callback()
    assert clr.settings.base_lr == pytest.approx(tuple(base)) and clr.settings.max_lr == pytest.approx(tuple(high))


def test_a_tuned_max_lr_scale_scales_every_group(tmp_path: Path) -> None:
    Steps.fits.clear()
    result = tune(tmp_path, model=TwoGroups, n_trials=2, base_lr=[1e-4, 1e-3], max_lr=[1e-3, 1e-2],
                  min_max_lr_scale=0.5, max_max_lr_scale=2.0, pruner="none",
                  trainer_kwargs={"accelerator": "cpu", "callbacks": [Steps()]})
    for t, fit in zip(result.study.get_trials(), Steps.fits):
        s = t.params["max_lr_scale"]
        expected = [1e-4 + (1e-3 - 1e-4) * s, 1e-3 + (1e-2 - 1e-3) * s]
        assert t.user_attrs["max_lr"] == pytest.approx(expected) and fit["max_lr"] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- one range test
class CountRangeTests:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import lightning_clr.range_test as rt

        self.calls = 0
        original = rt.run_range_test

        def counting(*args: Any, **kwargs: Any) -> Any:  # the real test, counted
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(rt, "run_range_test", counting)


def test_own_objective_without_bounds_runs_one_range_test_per_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21.2: suggest_cycle without bounds re-ran the range test in every trial, silently."""
    counted = CountRangeTests(monkeypatch)
    seen: list[Any] = []

    def objective(trial: optuna.Trial) -> float:
        pl.seed_everything(trial.number, verbose=False)
        clr = suggest_cycle(trial, min_half_cycle_epochs=1, max_half_cycle_epochs=2, range_test=SMALL_TEST)
        pruning = CyclePruningCallback(trial, monitor="val_loss")
        trainer = pl.Trainer(accelerator="cpu", max_epochs=4, callbacks=[clr, pruning], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Net(), datamodule=DM())
        seen.append((clr.base_lr, clr.max_lr))
        return float(trainer.callback_metrics["val_loss"])

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "o.jl")))
    study = optuna.create_study(study_name="own", storage=storage)
    with caplog.at_level(logging.INFO):
        study.optimize(objective, n_trials=3)
    assert counted.calls == 1
    assert len(set(seen)) == 1  # one bound pair in every trial
    assert study.user_attrs["clr_max_lr"] == [seen[0][1]]
    assert "reuses the study's LR bounds" in caplog.text
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["own"]  # the claim is gone


def test_stale_claim_is_taken_over_after_the_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that claimed the range test and died leaves a claim: the next one waits (bounded), then runs it."""
    from lightning_clr.tuning import _bounds

    counted = CountRangeTests(monkeypatch)
    monkeypatch.setattr(_bounds, "WAIT_S", 1.0)
    storage = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="stale", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    assert _bounds.claim(study)  # a worker that died after claiming
    with pytest.warns(UserWarning, match="no bounds after 1 s"):
        result = tune(tmp_path, n_trials=1, base_lr=None, max_lr=None, range_test=SMALL_TEST, storage=storage,
                      study_name="stale")
    assert counted.calls == 1 and "clr_max_lr" in result.study.user_attrs


# ---------------------------------------------------------------------------------------------- four workers
def _four_workers(tmp_path: Path, storage: str, name: str) -> optuna.Study:
    args = ["--storage", storage, "--study-name", name, "--n-trials", "1", "--no-bounds", "--pruner", "none",
            "--start-with", str(tmp_path / "barrier"), "4",  # all four released at once, once all are ready
            "--sleep", "0.2"]  # a range test of 2.4 s: the others open the storage while it runs (PostgreSQL: ~1 s)
    procs = [worker(tmp_path / f"w{i}", *args, "--seed", str(i), wait=False) for i in range(4)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    waited = sum("waiting for its bounds" in out for out in outs)
    assert waited >= 1, outs  # some really met the claim (started apart, each could have found stored bounds)
    tests = [line for path in sorted(tmp_path.glob("w*/range_tests.jsonl")) for line in path.read_text().splitlines()]
    assert len(tests) == 1, tests  # one range test in the whole study
    study_storage = database_url(storage) if "://" in storage else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage))
    study = optuna.load_study(study_name=name, storage=study_storage)
    pairs = {(json.dumps(t.user_attrs["base_lr"]), json.dumps(t.user_attrs["max_lr"])) for t in study.trials}
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert pairs == {(json.dumps(study.user_attrs["clr_base_lr"]), json.dumps(study.user_attrs["clr_max_lr"]))}
    assert [s.study_name for s in optuna.get_all_study_summaries(study_storage) if name in s.study_name] == [name]
    return study


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_four_workers_on_a_fresh_journal_study_run_one_range_test(tmp_path: Path) -> None:
    _four_workers(tmp_path, str(tmp_path / "shared.journal"), "four")


@pytest.mark.slow
@pytest.mark.timeout(400)
@needs_pg
def test_four_workers_on_a_fresh_postgresql_study_run_one_range_test(tmp_path: Path) -> None:
    name = f"lightning_clr_test_{uuid.uuid4().hex[:12]}"
    try:
        _four_workers(tmp_path, PG_URL, name)
    finally:
        try:
            optuna.delete_study(study_name=name, storage=database_url(PG_URL))
        except KeyError:
            pass


def test_trial_plan_is_frozen_and_plain() -> None:
    from lightning_clr.tuning._trial_plan import TrialPlan

    plan = TrialPlan(number=3, seed=3, half_cycle_epochs=2, mode="triangular", max_lr_scale=0.5,
                     base_lr=(1e-4, 1e-3), max_lr=(1e-3, 1e-2), epochs=8)
    assert plan.max_lr_trained == pytest.approx((1e-4 + 0.5 * 9e-4, 1e-3 + 0.5 * 9e-3))
    settings = plan.settings(SMALL_TEST)
    assert settings.half_cycle_epochs == 2.0 and settings.fit_whole_cycles and settings.max_lr == pytest.approx(
        plan.max_lr_trained)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.epochs = 4  # type: ignore[misc]
    clr = CyclicLearningRate()
    clr.apply(settings)
    assert clr.settings is settings
    with pytest.raises(TypeError):
        clr.apply({"half_cycle_epochs": 2})  # type: ignore[arg-type]


def test_tune_cycle_length_parameters_are_written_once() -> None:
    """The signature holds the types and defaults; TuneRun's fields are its parameters, by name and in order."""
    from lightning_clr import tune_cycle_length
    from lightning_clr.tuning._config import TuneRun

    assert list(inspect.signature(tune_cycle_length).parameters) == [f.name for f in dataclasses.fields(TuneRun)]


class ApplyMidFit(pl.Callback):
    def __init__(self, clr: CyclicLearningRate) -> None:
        self.clr, self.error = clr, None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        try:
            self.clr.apply(self.clr.settings.replace(half_cycle_epochs=8))
        except RuntimeError as err:
            self.error = str(err)
        trainer.should_stop = True


def test_apply_is_refused_while_a_fit_trains() -> None:
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.05)
    spy = ApplyMidFit(clr)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, callbacks=[clr, spy], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Net(), datamodule=DM())
    assert spy.error is not None and "a fit is training" in spy.error
    assert clr.settings.half_cycle_epochs == 2.0  # unchanged
