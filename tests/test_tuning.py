"""tune_cycle_length: real Lightning trials, cycle-end pruning, DDP-safe trials, storages, faults, output.

Multi-process cases (DDP, two workers, SIGKILL) run tests/scripts/tune_worker.py through ``subprocess``,
each with its own MASTER_PORT. PostgreSQL cases use the real server at 127.0.0.1:5432 and skip only when
no server answers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from helpers import SameTaskData
from optuna.trial import TrialState
from processes import clean_env, free_port
from torch import nn

from lightning_clr import CyclicLearningRate, RangeTestConfig, tune_cycle_length
from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig
from lightning_clr.tuning._pruners import CycleEndMedianPruner

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "tune_worker.py"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"  # the plain URL of Optuna's docs (psycopg 3)


# ---------------------------------------------------------------------------------------------- helpers
DM = functools.partial(SameTaskData, n=64, batch_size=16)  # the tests' data module: 4 steps per epoch


class Net(pl.LightningModule):
    """Tiny MLP; ``fail`` makes its training step raise, ``nan`` its validation loss NaN; ``val_scale``
    multiplies the logged validation loss (a model that is plainly worse)."""

    built: list[Net] = []

    def __init__(self, fail: bool = False, nan: bool = False, val_scale: float = 1.0) -> None:
        super().__init__()
        self.fail, self.nan, self.val_scale = fail, nan, val_scale
        self.net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        self.initial = [p.detach().clone() for p in self.parameters()]
        Net.built.append(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("a bug in the user's training_step")
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y) * self.val_scale
        self.log("val_loss", loss * float("nan") if self.nan else loss)
        self.log("val_score", -loss)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tune(tmp_path: Path, **kwargs: Any) -> Any:
    args: dict[str, Any] = dict(
        n_trials=3, max_epochs=4, min_half_cycle_epochs=1, max_half_cycle_epochs=2, base_lr=0.01, max_lr=0.05,
        output_dir=str(tmp_path / "tuning"), plot=False, progress_bar=False, logger=False,
        trainer_kwargs={"accelerator": "cpu"},
    )
    args.update(kwargs)
    model = args.pop("model", Net)
    groups = {name: {k: args.pop(k) for k in list(args) if k in fields(cls)}
              for name, cls in (("search", SearchSpace), ("study", StudyConfig), ("output", OutputConfig))}
    return tune_cycle_length(model, args.pop("datamodule", DM), **args, **groups)


def fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def worker(out: Path, *args: str, torchrun: bool = False, wait: bool = True, timeout: int = 240) -> Any:
    cmd = [sys.executable, str(WORKER), "--out", str(out), *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(WORKER), "--out", str(out), *args]
    if not wait:
        return subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and any(m in proc.stdout + proc.stderr for m in ("EADDRINUSE", "ddress already in use")):
        shutil.rmtree(out, ignore_errors=True)  # another run on the machine took the port: once more, afresh
        proc = subprocess.run(cmd_with_port(cmd, torchrun), env=clean_env(), capture_output=True, text=True,
                              timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


def cmd_with_port(cmd: list[str], torchrun: bool) -> list[str]:
    return [f"--master_port={free_port()}" if torchrun and c.startswith("--master_port=") else c for c in cmd]


def rank_rows(out: Path) -> dict[int, list[dict[str, Any]]]:
    return {int(p.stem[4:]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(out.glob("rank*.jsonl"))}


def worker_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("result_*.json"))]


def postgres_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


needs_pg = pytest.mark.skipif(not postgres_up(), reason="no PostgreSQL server answers at 127.0.0.1:5432")


@pytest.fixture
def pg_study_name() -> Any:
    name = f"lightning_clr_test_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=PG_URL)
    except KeyError:
        pass


# ---------------------------------------------------------------------------------------------- API
def test_optuna_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install lightning-clr\[tune\]"):
        tune(tmp_path)


def test_package_import_does_not_import_optuna() -> None:
    code = "import sys, lightning_clr; assert 'optuna' not in sys.modules; print(lightning_clr.tune_cycle_length)"
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tune_cycle_length" in proc.stdout


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"min_half_cycle_epochs": 3, "max_half_cycle_epochs": 2}, "search.max_half_cycle_epochs"),
        ({"min_half_cycle_epochs": 1, "max_half_cycle_epochs": 4, "half_cycle_step": 2}, "search.half_cycle_step"),
        ({"modes": ["zigzag"]}, "search.modes"),
        ({"base_lr": 0.1, "max_lr": 0.01}, "max_lr"),
        ({"direction": "down"}, "study.direction"),
        ({"sampler": "grid"}, "study.sampler"),
        ({"pruner": object()}, "study.pruner"),
        ({"min_max_lr_scale": 0.0}, "search.min_max_lr_scale"),
        ({"heartbeat_interval": 2.0, "grace_period": 1.0}, "study.grace_period"),
        ({"timeout": 5.0, "trainer_kwargs": {"devices": 2}}, "timeout"),
        ({"model": "Net"}, "model"),
        ({"trainer_kwargs": {"max_epochs": -1}, "max_epochs": None}, r"trainer_kwargs\['max_epochs'\]"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path: Path, kwargs: dict[str, Any], name: str) -> None:
    Net.built.clear()
    with pytest.raises(ValueError, match=rf"`{name}`.*got"):
        tune(tmp_path, **kwargs)
    assert Net.built == []  # no model was built, so no training step ran


def test_a_monitor_the_model_never_logs_is_refused_before_any_trial(tmp_path: Path) -> None:
    """Before: every trial trained to its first cycle end, failed, and the study ended with no result."""
    Net.built.clear()
    storage = str(tmp_path / "s.journal")
    with pytest.raises(ValueError, match=r"`monitor` must be a metric that the model logs.*'val_loss'.*got 'nosuch'"):
        tune(tmp_path, monitor="nosuch", storage=storage, study_name="probe")
    assert len(Net.built) == 1  # the one throwaway model of the probe (one training batch)
    study = optuna.load_study(study_name="probe", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    assert study.trials == []


# ---------------------------------------------------------------------------------------------- trials
def test_trials_are_real_fits_with_fresh_models_seeds_and_logger_versions(tmp_path: Path) -> None:
    Net.built.clear()
    result = tune(tmp_path, n_trials=3, logger=True, seed=7, pruner="none")
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    probe, *built = Net.built  # the first: the monitor probe's throwaway model
    assert len(built) == 3 and len({id(m) for m in built}) == 3
    for trial, model in zip(trials, built):
        assert trial.user_attrs["seed"] == 7 + trial.number
        torch.manual_seed(7 + trial.number)
        expected = Net.__new__(Net)
        nn.Module.__init__(expected)
        expected.net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        assert all(torch.equal(a, b) for a, b in zip(model.initial, expected.net.parameters()))
        assert not torch.equal(model.initial[0], dict(model.named_parameters())["net.0.weight"])  # it trained
        metrics = tmp_path / "tuning" / "trials" / f"trial_{trial.number}" / "metrics.csv"
        assert metrics.exists(), metrics
    # the objective is the monitored metric at the trial's last validation, a cycle end
    for t in trials:
        assert t.value == t.intermediate_values[max(t.intermediate_values)]


class CountFits(pl.Callback):
    fits: list[tuple[int, int]] = []

    def __init__(self) -> None:
        self.seen = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen += 1
        CountFits.fits.append((id(self), self.seen))


def test_user_callbacks_are_fresh_in_every_trial(tmp_path: Path) -> None:
    CountFits.fits.clear()
    user = CountFits()
    tune(tmp_path, n_trials=3, pruner="none", trainer_kwargs={"accelerator": "cpu", "callbacks": [user]})
    assert len(CountFits.fits) == 3
    assert len({i for i, _ in CountFits.fits}) == 3 and all(seen == 1 for _, seen in CountFits.fits)
    assert user.seen == 0  # the user's own instance is never trained with


def test_search_space_and_warm_start_within_range(tmp_path: Path) -> None:
    result = tune(tmp_path, n_trials=5, max_epochs=6, min_half_cycle_epochs=3, max_half_cycle_epochs=6,
                  modes=["triangular", "triangular2"], min_max_lr_scale=0.5, max_max_lr_scale=2.0, pruner="none")
    trials = result.study.get_trials()
    # Smith's 2, 4 and 8 epochs, clipped into [3, 6]: 3, 4, 6 come first
    assert [t.params["half_cycle_epochs"] for t in trials[:3]] == [3, 4, 6]
    for t in trials:
        assert 3 <= t.params["half_cycle_epochs"] <= 6
        assert t.params["mode"] in ("triangular", "triangular2")
        assert 0.5 <= t.params["max_lr_scale"] <= 2.0
        assert t.user_attrs["base_lr"] == 0.01 < t.user_attrs["max_lr"]  # base < max by construction
        h = t.params["half_cycle_epochs"]
        assert t.user_attrs["epochs"] % (2 * h) == 0  # a whole number of cycles


def test_direction_and_monitor_are_configurable(tmp_path: Path) -> None:
    result = tune(tmp_path, monitor="val_score", direction="maximize", n_trials=3, pruner="none",
                  max_half_cycle_epochs=3)  # three distinct half-cycles: best_value is one trial's value
    values = [t.value for t in result.study.get_trials()]
    assert all(v < 0 for v in values)  # val_score = -loss
    assert result.best_value == max(values)


def test_reports_only_at_cycle_ends_but_records_every_validation(tmp_path: Path) -> None:
    result = tune(tmp_path, n_trials=2, max_epochs=8, min_half_cycle_epochs=1, max_half_cycle_epochs=4,
                  warm_start=True, pruner="none")
    by_h = {t.params["half_cycle_epochs"]: t for t in result.study.get_trials()}
    assert set(by_h) == {2, 4}
    assert sorted(by_h[2].intermediate_values) == [4, 8]  # cycle ends of a 4-epoch cycle
    assert sorted(by_h[4].intermediate_values) == [8]
    assert sorted(int(k) for k in by_h[4].user_attrs["history"]) == list(range(1, 9))  # every validation


def test_pruner_compares_only_cycle_end_values_up_to_the_same_epoch() -> None:
    study = optuna.create_study(pruner=CycleEndMedianPruner(n_startup_trials=1))
    dist = {"half_cycle_epochs": optuna.distributions.IntDistribution(1, 8)}
    # A short-cycle trial: good at its cycle ends 2, 4, 6, 8.
    study.add_trial(optuna.trial.create_trial(params={"half_cycle_epochs": 1}, distributions=dist, value=0.2,
                                              intermediate_values={2: 0.9, 4: 0.5, 6: 0.3, 8: 0.2}))
    trial = study.ask(dist)
    trial.report(0.6, step=4)  # a long cycle's first cycle end: worse than 0.5 at epoch <= 4: pruned
    assert trial.should_prune()
    trial2 = study.ask(dist)
    trial2.report(0.45, step=4)  # better than every value at epoch <= 4 (0.8 at epoch 8 is ignored)
    assert not trial2.should_prune()
    trial3 = study.ask(dist)
    trial3.report(0.7, step=2)  # at epoch 2 only the other trial's 0.9 counts
    assert not trial3.should_prune()


def _reported(study: optuna.Study, values: dict[int, float], dist: dict[str, Any]) -> optuna.Trial:
    trial = study.ask(dist)
    for step, value in values.items():
        trial.report(value, step=step)
    return trial


def test_cycle_halving_rungs_are_met_by_the_first_cycle_end_past_them() -> None:
    from optuna.distributions import IntDistribution

    from lightning_clr.tuning import CycleHalvingPruner

    dist = {"half_cycle_epochs": IntDistribution(1, 12)}
    study = optuna.create_study(pruner=CycleHalvingPruner(min_resource=2, reduction_factor=3))
    for values in ({4: 0.50, 8: 0.40, 12: 0.35}, {4: 0.60, 8: 0.45}, {4: 0.55, 8: 0.50}):
        study.tell(_reported(study, values, dist), list(values.values())[-1])
    # a long cycle first reports at epoch 10: it meets rungs 2 and 6 there, and is judged at rung 6 against the
    # others' values at their first cycle ends at or after epoch 6 (0.40, 0.45, 0.50): kept only if the best
    long = _reported(study, {10: 0.42}, dist)
    assert long.should_prune()  # 0.42 > 0.40: not in the best third of 4
    best = _reported(study, {10: 0.39}, dist)
    assert not best.should_prune()
    # no rung between its previous cycle end (10) and this one (14): never judged there
    best.report(0.9, step=14)
    assert not best.should_prune()
    # a value reported mid-way between rungs is not compared; the next rung (18) judges again
    best.report(0.9, step=20)
    assert not best.should_prune()  # nobody else reached rung 18
    maximize = optuna.create_study(direction="maximize", pruner=CycleHalvingPruner(min_resource=2))
    maximize.tell(_reported(maximize, {2: 0.9}, dist), 0.9)
    assert _reported(maximize, {2: 0.5}, dist).should_prune()
    assert not _reported(maximize, {2: 0.95}, dist).should_prune()


def test_cycle_halving_prunes_a_bad_trial_in_the_tuner(tmp_path: Path) -> None:
    made = []

    def factory() -> Net:
        made.append(1)
        return Net(val_scale=100.0 if len(made) == 4 else 1.0)  # the first model: the monitor probe's

    result = tune(tmp_path, model=factory, n_trials=3, max_epochs=8, min_half_cycle_epochs=1,
                  max_half_cycle_epochs=1, pruner="cycle_halving")
    trials = result.study.get_trials()
    assert [t.state for t in trials][-1] == TrialState.PRUNED
    assert trials[-1].user_attrs["pruned_at_epoch"] == 2  # rung 0: its first cycle end


def test_pruned_trial_stops_at_a_cycle_end(tmp_path: Path) -> None:
    made = []

    def factory() -> Net:  # the third trial's model is badly off: it must be pruned at its first cycle end
        made.append(1)
        return Net(val_scale=100.0 if len(made) == 4 else 1.0)  # the first model: the monitor probe's

    result = tune(tmp_path, model=factory, n_trials=3, max_epochs=8, min_half_cycle_epochs=1,
                  max_half_cycle_epochs=1, n_startup_trials=2)
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[2].user_attrs["pruned_at_epoch"] == 2
    assert list(trials[2].intermediate_values) == [2]
    assert result.epochs_trained == 8 + 8 + 2


# ---------------------------------------------------------------------------------------------- bounds
def test_range_test_runs_once_and_bounds_are_reused(tmp_path: Path) -> None:
    calls = []
    import lightning_clr.range_test as rt

    original = rt.run_range_test

    def counting(*args: Any, **kwargs: Any) -> Any:  # the real test, counted
        calls.append(1)
        return original(*args, **kwargs)

    rt.run_range_test = counting
    try:
        storage = str(tmp_path / "s.journal")
        config = RangeTestConfig(num_steps=12, save=False, progress_bar=False)
        kwargs = dict(base_lr=None, max_lr=None, range_test=config, storage=storage, study_name="b", pruner="none")
        result = tune(tmp_path, n_trials=2, **kwargs)
        assert len(calls) == 1
        attrs = result.study.user_attrs
        assert 0 < attrs["clr_base_lr"] < attrs["clr_max_lr"]
        for t in result.study.get_trials():
            assert (t.user_attrs["base_lr"], t.user_attrs["max_lr"]) == (attrs["clr_base_lr"], attrs["clr_max_lr"])
        # a second worker on the same study reuses the stored bounds: no second range test, and in one
        # process not even the short bounds fit (one model built: the trial's)
        Net.built.clear()
        tune(tmp_path, n_trials=1, **kwargs)
        assert len(calls) == 1 and len(Net.built) == 2  # the monitor probe's and the trial's
        # unless the user asks for a range test in every trial
        tune(tmp_path, n_trials=2, range_test_per_trial=True, **{**kwargs, "storage": None})
        assert len(calls) == 3
    finally:
        rt.run_range_test = original


# ---------------------------------------------------------------------------------------------- faults
def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    made = []

    def factory() -> Net:
        made.append(1)
        return Net(fail=len(made) == 2, nan=len(made) == 3)  # the first model: the monitor probe's

    result = tune(tmp_path, model=factory, n_trials=3, max_epochs=8)
    t0, t1, t2 = result.study.get_trials()
    assert t0.state == TrialState.FAIL and "RuntimeError: a bug in the user's training_step" in t0.user_attrs["error"]
    assert t1.state == TrialState.FAIL and "is NaN at epoch" in t1.user_attrs["error"]
    assert len(t1.user_attrs["history"]) < t1.user_attrs["epochs"]  # stopped at its first cycle end
    assert t2.state == TrialState.COMPLETE
    assert result.best_half_cycle_epochs == t2.params["half_cycle_epochs"]


def test_missing_monitor_fails_the_trial_with_a_clear_error(tmp_path: Path) -> None:
    """A metric logged by the probe's batch but not by the trial's fit (here: only in a first epoch)."""

    class SometimesNet(Net):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            super().validation_step(batch, batch_idx)
            if self.trainer.current_epoch == 0 and self.trainer.max_epochs == 1:  # the probe's one epoch
                self.log("val_acc", 0.5)

    result = tune(tmp_path, model=SometimesNet, monitor="val_acc", n_trials=1)
    (t,) = result.study.get_trials()
    assert t.state == TrialState.FAIL and "'val_acc'" in t.user_attrs["error"] and "val_loss" in t.user_attrs["error"]
    assert result.best_half_cycle_epochs is None


def test_early_stopping_before_the_first_cycle_end_is_a_clear_failure(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    stop_now = EarlyStopping(monitor="val_loss", stopping_threshold=1e9)  # stops at the first validation
    kwargs = dict(n_trials=2, max_epochs=8, min_half_cycle_epochs=2, max_half_cycle_epochs=4, pruner="none")
    with pytest.warns(UserWarning, match=r"EarlyStopping\(patience=3\).*2 \* max_half_cycle_epochs = 8"):
        result = tune(tmp_path, trainer_kwargs={"accelerator": "cpu", "callbacks": [stop_now]}, **kwargs)
    for t in result.study.get_trials():
        assert t.state == TrialState.FAIL
        assert t.user_attrs["stopped_at_epoch"] == 1 and list(t.user_attrs["history"]) == ["1"]
        first_end = 2 * t.params["half_cycle_epochs"]
        assert f"stopped at epoch 1 by another callback (EarlyStopping?) before its first cycle end at epoch" \
               f" {first_end}" in t.user_attrs["error"]
    # stopped mid-cycle after a cycle end: the trial's value is its last cycle-end value
    late = dict(kwargs, n_trials=1, warm_start=False, min_half_cycle_epochs=1, max_half_cycle_epochs=1)
    result = tune(tmp_path / "late", trainer_kwargs={"accelerator": "cpu", "callbacks": [StopAt(3)]}, **late)
    (t,) = result.study.get_trials()
    assert t.state == TrialState.COMPLETE and t.user_attrs["stopped_at_epoch"] == 3
    assert list(t.intermediate_values) == [2] and t.value == t.user_attrs["history"]["2"]


class StopAt(pl.Callback):
    """A user's callback that ends the fit after epoch ``epoch`` (1-based)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            trainer.should_stop = True


# ---------------------------------------------------------------------------------------------- output
def test_result_summary_plots_and_callback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's own backend: saving the plots must not switch it
    try:
        result = tune(tmp_path, n_trials=2, plot=True, pruner="none")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    best = result.study.best_trial
    assert result.best_half_cycle_epochs == best.params["half_cycle_epochs"]
    assert result.steps_per_epoch == 4  # 64 samples / batch 16
    assert result.best_step_size_up == result.best_half_cycle_epochs * 4
    summary = (tmp_path / "tuning" / "summary.txt").read_text()
    assert "COMPLETE" in summary and f"half-cycle {result.best_half_cycle_epochs} epochs" in summary
    for path in result.plots:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {Path(p).name for p in result.plots} == {"optimization_history.png", "cycle_length.png"}
    clr = result.callback()
    assert isinstance(clr, CyclicLearningRate)
    assert clr.half_cycle_epochs == result.best_half_cycle_epochs and clr.max_lr == result.best_max_lr


# ---------------------------------------------------------------------------------------------- storages
def test_journal_storage_resumes_a_study(tmp_path: Path) -> None:
    storage = str(tmp_path / "study.journal")
    tune(tmp_path, n_trials=2, storage=storage, study_name="resume")
    result = tune(tmp_path, n_trials=1, storage=storage, study_name="resume")
    assert len(result.study.get_trials()) == 3
    assert len(optuna.load_study(study_name="resume", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage))).trials) == 3


@needs_pg
def test_postgresql_storage(tmp_path: Path, pg_study_name: str) -> None:
    result = tune(tmp_path, n_trials=2, storage=PG_URL, study_name=pg_study_name)
    loaded = optuna.load_study(study_name=pg_study_name, storage=PG_URL)
    assert [t.state for t in loaded.trials] == [TrialState.COMPLETE] * 2
    assert loaded.best_trial.params == result.study.best_trial.params


def _two_workers(tmp_path: Path, storage: str, name: str) -> None:
    procs = [worker(tmp_path / f"w{i}", "--storage", storage, "--study-name", name, "--n-trials", "3",
                    "--seed", str(i), wait=False) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_share_a_journal_file(tmp_path: Path) -> None:
    storage = str(tmp_path / "shared.journal")
    _two_workers(tmp_path, storage, "shared")
    study = optuna.load_study(study_name="shared", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(6))  # none lost, none duplicated
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_pg
def test_two_workers_share_a_postgresql_study(tmp_path: Path, pg_study_name: str) -> None:
    optuna.create_study(study_name=pg_study_name, storage=PG_URL, direction="minimize")  # created ahead
    _two_workers(tmp_path, PG_URL, pg_study_name)
    study = optuna.load_study(study_name=pg_study_name, storage=PG_URL)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def _kill_mid_trial(tmp_path: Path, storage: str, name: str, load: Any) -> None:
    args = ["--storage", storage, "--study-name", name, "--heartbeat", "0.5", "--grace", "2", "--no-warm-start"]
    proc = worker(tmp_path / "killed", *args, "--n-trials", "1", "--sleep", "0.2", "--max-epochs", "40",
                  wait=False)
    deadline = time.time() + 120
    running = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        try:
            running = load().get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study does not exist yet
            continue
        assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert running, "the worker never started a trial"
    time.sleep(1.5)  # a couple of heartbeats
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert [t.state for t in load().trials] == [TrialState.RUNNING]  # left behind by the dead worker
    time.sleep(2.5)  # > grace period
    worker(tmp_path / "next", *args, "--n-trials", "1")
    first, second = load().trials
    assert first.state == TrialState.FAIL and "stale" in first.user_attrs["error"]
    assert second.state == TrialState.COMPLETE


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_worker_trial_is_failed_by_the_next_worker_journal(tmp_path: Path) -> None:
    storage = str(tmp_path / "kill.journal")

    def load() -> Any:
        return optuna.load_study(study_name="kill", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage)))

    _kill_mid_trial(tmp_path, storage, "kill", load)


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_pg
def test_killed_worker_trial_is_failed_by_the_next_worker_postgresql(tmp_path: Path, pg_study_name: str) -> None:
    _kill_mid_trial(tmp_path, PG_URL, pg_study_name, lambda: optuna.load_study(study_name=pg_study_name,
                                                                                storage=PG_URL))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_live_trial_past_the_grace_period_is_not_failed_by_another_workers_sweep(tmp_path: Path) -> None:
    """Issue 11's blind spot: a tuner that never wrote its heartbeat would pass the kill tests (the dead
    worker's trial is old either way) but would have its live trials failed by every other worker."""
    storage = str(tmp_path / "live.journal")

    def load() -> Any:
        return optuna.load_study(study_name="live", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage)))

    args = ["--storage", storage, "--study-name", "live", "--heartbeat", "0.5", "--grace", "2", "--no-warm-start",
            "--n-trials", "1"]
    slow = worker(tmp_path / "slow", *args, "--sleep", "0.2", "--max-epochs", "24", "--max-half", "1", wait=False)
    deadline = time.time() + 120
    running: list = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        try:
            running = load().get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            continue
        assert slow.poll() is None, slow.communicate()[0][-3000:]
    assert running, "the slow worker never started a trial"
    time.sleep(4.0)  # its trial is now older than the grace period: only its heartbeat keeps it alive
    assert slow.poll() is None and load().trials[0].state == TrialState.RUNNING
    sweeper = worker(tmp_path / "sweeper", *args)  # sweeps stale RUNNING trials before its own trial
    assert "marked stale" not in sweeper.stdout + sweeper.stderr
    out, _ = slow.communicate(timeout=240)
    assert slow.returncode == 0, out[-4000:]
    first, second = sorted(load().trials, key=lambda t: t.number)
    assert first.state == TrialState.COMPLETE and "error" not in first.user_attrs, first.user_attrs
    assert second.state == TrialState.COMPLETE
    assert (first.datetime_complete - first.datetime_start).total_seconds() > 2 * 2  # it really outlived grace


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_naive_per_rank_ask_trains_each_rank_with_its_own_cycle(tmp_path: Path) -> None:
    """The optuna-integration failure, reproduced honestly: every rank asks for its own trial."""
    worker(tmp_path, "--mode", "naive", "--strategy", "ddp", "--devices", "2")
    rows = rank_rows(tmp_path)
    assert set(rows) == {0, 1}
    assert rows[0][0]["step_size_up"] != rows[1][0]["step_size_up"]
    assert rows[0][0]["first_weight"] != rows[1][0]["first_weight"]  # the replicas diverged


def _check_ddp(out: Path, n_trials: int) -> None:
    rows = rank_rows(out)
    (res,) = worker_results(out)
    trials = res["trials"]
    seen = f"ranks: {json.dumps(rows)}\ntrials: {json.dumps(trials)}"
    assert set(rows) == {0, 1} and len(rows[0]) == len(rows[1]) == n_trials, seen
    for r0, r1 in zip(rows[0], rows[1]):
        assert r0["world_size"] == 2
        for key in ("step_size_up", "half_cycle_epochs", "base_lr", "max_lr", "epochs", "max_epochs", "first_weight"):
            assert r0[key] == r1[key], (key, seen)
    assert len(trials) == n_trials, seen  # one trial per fit, not one per rank
    assert [r["half_cycle_epochs"] for r in rows[0]] == [t["params"]["half_cycle_epochs"] for t in trials], seen
    # the badly-scoring last trial is pruned on every rank together, at one of its cycle ends
    assert trials[-1]["state"] == "PRUNED", seen
    cycle = 2 * trials[-1]["params"]["half_cycle_epochs"]
    assert rows[0][-1]["epochs"] == rows[1][-1]["epochs"] == trials[-1]["user_attrs"]["pruned_at_epoch"], seen
    assert rows[0][-1]["epochs"] % cycle == 0 and rows[0][-1]["epochs"] < rows[0][-1]["max_epochs"], seen


DDP_ARGS = ("--devices", "2", "--n-trials", "3", "--max-half", "2", "--max-epochs", "8", "--bad-from-fit", "2")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_all_ranks_train_the_same_trial(tmp_path: Path) -> None:
    worker(tmp_path, "--strategy", "ddp", *DDP_ARGS, "--logger")
    _check_ddp(tmp_path, 3)
    for n in range(3):  # one logger version per trial, written by rank 0
        assert (tmp_path / "tuning" / "trials" / f"trial_{n}" / "metrics.csv").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_all_ranks_train_the_same_trial(tmp_path: Path) -> None:
    worker(tmp_path, "--strategy", "ddp", *DDP_ARGS, torchrun=True)
    _check_ddp(tmp_path, 3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_error_on_rank_zero_stops_every_rank(tmp_path: Path) -> None:
    """Rank 0 alone finds the monitored metric missing: every rank raises together instead of hanging."""
    cmd = [sys.executable, str(WORKER), "--out", str(tmp_path), "--strategy", "ddp", "--devices", "2",
           "--n-trials", "1", "--monitor", "val_missing"]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "the monitored metric 'val_missing' was not logged" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_spawn_keeps_the_study(tmp_path: Path) -> None:
    """In-memory storage cannot cross into spawned children: a journal file under output_dir is used."""
    spawn_args = ("--devices", "2", "--n-trials", "2", "--max-half", "2", "--max-epochs", "8", "--bad-from-fit", "1",
                  "--n-startup-trials", "1")  # two trials: each spawn costs ~25 s here
    worker(tmp_path, "--strategy", "ddp_spawn", *spawn_args)
    _check_ddp(tmp_path, 2)
    assert (tmp_path / "tuning" / "study.journal").exists()


def test_values_are_finite_in_the_trial_table(tmp_path: Path) -> None:
    result = tune(tmp_path, n_trials=2, pruner="none")
    rows = result.trials()
    assert [r["number"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["value"]) and r["step_size_up"] == r["half_cycle_epochs"] * 4 for r in rows)


def test_a_setting_suggested_twice_is_judged_by_its_mean_not_its_luckiest_run() -> None:
    from optuna.distributions import IntDistribution

    from lightning_clr.tuning._result import result_of as _result

    study = optuna.create_study(direction="minimize")
    dist = {"half_cycle_epochs": IntDistribution(1, 12)}
    for h, value in ((12, 0.40), (12, 0.60), (10, 0.45)):
        study.add_trial(optuna.trial.create_trial(
            params={"half_cycle_epochs": h}, distributions=dist, value=value, user_attrs={"steps_per_epoch": 3}
        ))
    assert study.best_trial.params["half_cycle_epochs"] == 12  # Optuna's pick: the luckiest single run
    result = _result(study, "val_loss", "minimize", 0, (None, None))
    assert result.best_half_cycle_epochs == 10 and result.best_value == pytest.approx(0.45)
    assert result.best_step_size_up == 30
    study.add_trial(optuna.trial.create_trial(params={"half_cycle_epochs": 10}, distributions=dist, value=0.65))
    result = _result(study, "val_loss", "minimize", 0, (None, None))
    assert result.best_half_cycle_epochs == 12 and result.best_value == pytest.approx(0.50)


# ---------------------------------------------------------------------------------------------- CLI
DIGITS = ["--model", "examples.digits.DigitsClassifier", "--data", "examples.digits.DigitsDataModule"]
TINY = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--clr.base_lr=0.01", "--clr.max_lr=0.1", "--search.min_half_cycle_epochs=1",
        "--search.max_half_cycle_epochs=1", "--output.plot=false", "--output.progress_bar=false"]


def lightning_clr_tune(cwd: Path, *argv: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = clean_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(cwd)]), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "lightning_clr.cli", "tune", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--monitor=nosuch"], "--monitor: `monitor` must be a metric that the model logs"),
        (["--n_trials=0"], "--n_trials: `n_trials` must be a whole number >= 1, got 0"),
        (["--search.min_half_cycle_epochs=3", "--search.max_half_cycle_epochs=2"], "`search.max_half_cycle_epochs`"),
        (["--study.pruner=halving"], "study.pruner"),
    ],
    ids=["monitor", "n_trials", "reversed-range", "pruner"],
)
def test_cli_tune_bad_argument_is_one_line_exit_2_before_any_trial(tmp_path: Path, argv: list[str], flag: str) -> None:
    """Before: --monitor nosuch failed every trial and exited 0; the other two were 25-line tracebacks."""
    storage = tmp_path / "s.journal"
    proc = lightning_clr_tune(tmp_path, *DIGITS, *TINY, f"--study.storage={storage}", "--study.study_name=x",
                              f"--output.output_dir={tmp_path / 'out'}", *argv)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and flag in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    if storage.exists():  # the study may exist; no trial was asked for
        study = optuna.load_study(study_name="x", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(storage))))
        assert study.trials == []
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_tune_exits_non_zero_when_no_trial_completed(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "from examples.digits import DigitsClassifier\n\n\n"
        "class Broken(DigitsClassifier):\n"
        "    def training_step(self, batch, batch_idx):\n"
        "        raise RuntimeError('a bug in training_step')\n"
    )
    proc = lightning_clr_tune(tmp_path, "--model=broken.Broken", "--data=examples.digits.DigitsDataModule", *TINY,
                              "--n_trials=2", f"--output.output_dir={tmp_path / 'out'}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no trial completed (trial states: FAIL" in proc.stderr
    assert "a bug in training_step" in (tmp_path / "out" / "summary.txt").read_text()


# ---------------------------------------------------------------------------------------------- storage faults
def test_plain_database_urls_get_an_installed_driver() -> None:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3 and mysql:// to mysqlclient: the [tune] extra brings
    psycopg 3 and PyMySQL, and a plain mysql:// URL is mapped to PyMySQL when mysqlclient is missing."""
    import importlib.util

    from lightning_clr.tuning._storage import database_url

    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert importlib.util.find_spec("psycopg") is not None and importlib.util.find_spec("pymysql") is not None
    expected = "mysql+mysqldb" if importlib.util.find_spec("MySQLdb") else "mysql+pymysql"
    assert database_url("mysql://u@h/db") == f"{expected}://u@h/db"
    assert database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"  # explicit: kept
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:1/test", "mysql://root:secret@127.0.0.1:1/test"])
def test_a_database_that_refuses_connections_is_one_line(tmp_path: Path, url: str) -> None:
    from lightning_clr.tuning import StorageError

    Net.built.clear()
    with pytest.raises(StorageError) as info:
        tune(tmp_path, storage=url, study_name="refused")
    message = str(info.value)
    assert "\n" not in message and url.split("@")[1] in message, message
    assert "refused" in message.lower(), message  # the real cause, not "invalid data in the commit"
    assert "secret" not in message  # the password is hidden
    assert Net.built == []


@pytest.mark.slow
@needs_pg
@pytest.mark.timeout(180)
def test_a_database_that_stops_accepting_connections_mid_trial(tmp_path: Path) -> None:
    """Before: "invalid data in the commit, e.g. exceeding max length"; the real cause only in the chain."""
    import psycopg

    from lightning_clr.tuning import StorageError

    db = f"lclr_refuse_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True)
    admin.execute(f"CREATE DATABASE {db}")
    url = f"postgresql://postgres@127.0.0.1:5432/{db}"

    class CutOff(Net):
        def on_train_epoch_start(self) -> None:
            if self.current_epoch == 1 and len(Net.built) == 2:  # the first trial, after its first epoch
                admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
                admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")

    try:
        Net.built.clear()
        with pytest.raises(StorageError) as info:
            tune(tmp_path, model=CutOff, storage=url, study_name="cut", max_epochs=4, max_half_cycle_epochs=1,
                 n_trials=2)
        message = str(info.value)
        assert "\n" not in message and db in message, message
        assert "invalid data in the commit" not in message, message
        causes = ("terminating connection due to administrator command", "not currently accepting connections")
        assert any(cause in message for cause in causes), message
        admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        (trial,) = optuna.load_study(study_name="cut", storage=url).trials
        assert trial.state == TrialState.RUNNING  # left for the next worker's heartbeat sweep
    finally:
        admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        admin.execute(f"DROP DATABASE IF EXISTS {db}")
        admin.close()


def _immutable(path: Path, on: bool) -> bool:
    """``chattr +i``: a file that even root cannot write (a read-only journal, as a plain user meets it)."""
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


def test_a_read_only_journal_is_one_line(tmp_path: Path) -> None:
    """Before: a bare PermissionError from deep inside a trial."""
    from lightning_clr.tuning import StorageError

    journal = tmp_path / "ro.journal"
    optuna.create_study(study_name="ro", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    if os.geteuid() == 0 and not _immutable(journal, True):
        pytest.skip("root ignores file modes, and chattr +i is not available here")
    if os.geteuid() != 0:
        journal.chmod(0o444)
    try:
        with pytest.raises(StorageError) as info:
            tune(tmp_path, storage=str(journal), study_name="ro")
    finally:
        _immutable(journal, False)
        journal.chmod(0o644)
    message = str(info.value)
    assert "\n" not in message and str(journal) in message and "PermissionError" in message, message


# ---------------------------------------------------------------------------------------------- after the work
def test_the_history_plots_best_line_is_best_value() -> None:
    """Before: "best so far" was drawn at the luckiest single run (0.40), best_value the setting's mean (0.45)."""
    from optuna.distributions import IntDistribution

    from lightning_clr.tuning._result import result_of

    study = optuna.create_study(direction="minimize")
    dist = {"half_cycle_epochs": IntDistribution(1, 12)}
    for h, value in ((12, 0.40), (12, 0.60), (10, 0.45)):
        study.add_trial(optuna.trial.create_trial(params={"half_cycle_epochs": h}, distributions=dist, value=value))
    result = result_of(study, "val_loss", "minimize", 0, (None, None))
    (line,) = result.history_figure().axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx([0.40, 0.50, 0.45])
    assert line.get_ydata()[-1] == pytest.approx(result.best_value)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_without_matplotlib_the_plots_are_skipped_with_one_warning(tmp_path: Path) -> None:
    """Before: every trial trained, then ImportError for matplotlib (plot=True is the default)."""
    import sysconfig

    # An environment without matplotlib: this venv's site-packages, linked entry by entry, but matplotlib's.
    site = tmp_path / "site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("matplotlib", "mpl_toolkits", "pylab")) and entry.suffix != ".pth":
            (site / entry.name).symlink_to(entry)
    code = f"""
import sys, warnings
sys.path.insert(0, {str(ROOT / "tests")!r})
import importlib.util
assert importlib.util.find_spec("matplotlib") is None
from test_tuning import tune
from pathlib import Path
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = tune(Path({str(tmp_path)!r}), n_trials=1, plot=True)
plots = [str(w.message) for w in caught if "matplotlib" in str(w.message)]
print("WARNINGS", len(plots), plots)
print("BEST", result.best_half_cycle_epochs, result.plots)
"""
    env = clean_env(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNINGS 1 " in proc.stdout and "pip install lightning-clr[plot]" in proc.stdout, proc.stdout
    assert re.search(r"BEST \d+ \[\]", proc.stdout), proc.stdout  # a result, no plot paths
    assert (tmp_path / "tuning" / "summary.txt").exists() and not list(tmp_path.rglob("*.png"))
