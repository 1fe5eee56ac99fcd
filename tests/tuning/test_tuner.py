"""tune_cycle_length: real Lightning trials, cycle-end pruning, DDP-safe trials, storages, faults, output.

Multi-process cases (DDP, two workers, SIGKILL) run tests/scripts/tune_worker.py through ``subprocess``,
each with its own MASTER_PORT. PostgreSQL cases use the real server at 127.0.0.1:5432 and skip only when
no server answers.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from optuna.trial import TrialState
from processes import clean_env
from torch import nn
from tuning_helpers import (
    ROOT,
    Net,
    tune,
)

from lightning_clr import CyclicLearningRate, RangeTestConfig
from lightning_clr.tuning._pruners import CycleEndMedianPruner


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
        assert t.user_attrs["base_lr"] == [0.01] and 0.01 < t.user_attrs["max_lr"][0]  # base < max by construction
        assert t.user_attrs["epochs"] == 6  # the budget, whatever the half-cycle


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
        assert 0 < attrs["clr_base_lr"][0] < attrs["clr_max_lr"][0]  # one value per param group
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
    assert clr.settings.final_lr_ratio == 0.1  # the tail the trials ran with, though the bounds are passed as given


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
from tuning_helpers import tune
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


def test_trials_are_quiet_unless_verbose(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every trial builds a Trainer: by default no Lightning banner or model summary for each (the tuner's own
    lines still come); output.verbose=True shows them; the mute ends with the call."""
    import logging

    with caplog.at_level(logging.INFO):
        tune(tmp_path / "quiet", n_trials=1)
    quiet = caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tune(tmp_path / "loud", n_trials=1, verbose=True)
    loud = caplog.text
    assert "GPU available" not in quiet and "trial    state" in quiet
    assert "GPU available" in loud and "Total params" in loud
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pl.Trainer(accelerator="cpu", logger=False)
    assert "GPU available" in caplog.text  # a Trainer built after the tuner is not muted
