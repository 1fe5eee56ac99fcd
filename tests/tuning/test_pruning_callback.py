"""suggest_cycle and CyclePruningCallback in a user's own Optuna objective: real Trainers, Optuna's own
pruners, and 2 gloo ranks under ddp, torchrun and ddp_spawn (tests/scripts/objective_worker.py)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
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
from tuning_helpers import PG_URL, needs_pg

from lightning_clr import CyclePruningCallback, CyclicLearningRate, suggest_cycle
from lightning_clr._validation import ArgumentError

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "scripts" / "objective_worker.py"
DM = functools.partial(SameTaskData, n=64, batch_size=16)  # 4 optimizer steps per epoch


class Net(pl.LightningModule):
    def __init__(self, val_scale: float = 1.0) -> None:
        super().__init__()
        self.val_scale = val_scale
        self.net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        self.validations = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        if not self.trainer.sanity_checking:
            self.validations += 1
        self.log("val_loss", nn.functional.mse_loss(self(x), y) * self.val_scale)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def make_objective(max_epochs: int, bad_from: int = 99, fits: list | None = None) -> Any:
    fits = fits if fits is not None else []

    def objective(trial: optuna.Trial) -> float:
        pl.seed_everything(0, verbose=False)
        clr = suggest_cycle(trial, min_half_cycle_epochs=1, max_half_cycle_epochs=3, base_lr=0.01, max_lr=0.05)
        pruning = CyclePruningCallback(trial, monitor="val_loss")
        trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, callbacks=[clr, pruning], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        model = Net(val_scale=100.0 if len(fits) >= bad_from else 1.0)
        trainer.fit(model, datamodule=DM())
        fits.append({"epochs": trainer.current_epoch, "validations": model.validations,
                     "step_size_up": clr.step_size_up, "reports": dict(pruning.reports)})
        pruning.check_pruned()
        return float(trainer.callback_metrics["val_loss"])

    return objective


def test_reports_only_at_cycle_ends_one_per_cycle() -> None:
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    for h in (1, 2, 3):
        study.enqueue_trial({"half_cycle_epochs": h})
    fits: list = []
    study.optimize(make_objective(max_epochs=6, fits=fits), n_trials=3)
    steps = [sorted(t.intermediate_values) for t in study.trials]
    # h = 1: cycles of 2 epochs; h = 2: max_epochs 6 -> 8, whole cycles of 4; h = 3: one cycle of 6
    assert steps == [[2, 4, 6], [4, 8], [6]]
    assert [f["epochs"] for f in fits] == [6, 8, 6]
    assert [f["validations"] for f in fits] == [6, 8, 6]  # validated every epoch, reported at cycle ends only
    assert [f["step_size_up"] for f in fits] == [4, 8, 12]  # exactly h epochs of 4 steps
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def _pruned_run(pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, list]:
    study = optuna.create_study(pruner=pruner)
    for _ in range(3):
        study.enqueue_trial({"half_cycle_epochs": 1})
    fits: list = []
    study.optimize(make_objective(max_epochs=8, bad_from=2, fits=fits), n_trials=3)
    return study, fits


@pytest.mark.parametrize(
    "pruner",
    [optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
     optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=2)],
    ids=["median", "successive_halving"],
)
def test_optuna_pruner_prunes_at_a_cycle_end_and_the_objective_raises_trial_pruned(pruner: Any) -> None:
    study, fits = _pruned_run(pruner)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    bad = study.trials[2]
    assert sorted(bad.intermediate_values) == [2]  # its first cycle end; never mid-cycle
    assert fits[2]["epochs"] == 2 < 8  # the fit ended there


def test_the_fit_stops_on_a_prune_but_only_check_pruned_raises() -> None:
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # prunes any positive loss
    trial = study.ask()
    clr = suggest_cycle(trial, min_half_cycle_epochs=1, max_half_cycle_epochs=1, base_lr=0.01, max_lr=0.05)
    pruning = CyclePruningCallback(trial)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=6, callbacks=[clr, pruning], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Net(), datamodule=DM())  # does not raise
    assert trainer.current_epoch == 2 and pruning.pruned_at_epoch == 2
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        pruning.check_pruned()


def _fit_monitoring(monitor: str, model: pl.LightningModule) -> pl.Trainer:
    """A fit whose first cycle end is at epoch 8 (half-cycle of 4 epochs), judged on ``monitor``."""
    trial = optuna.create_study().ask()
    clr = suggest_cycle(trial, min_half_cycle_epochs=4, max_half_cycle_epochs=4, base_lr=0.01, max_lr=0.05)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=8, callbacks=[clr, CyclePruningCallback(trial, monitor)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=DM())
    return trainer


def test_monitor_missing_is_an_error_after_the_first_validation_not_at_the_first_cycle_end() -> None:
    """A typo (`val_accuracy` for `val_loss`) used to surface at the first cycle end, here epoch 8."""
    model = Net()
    with pytest.raises(ArgumentError, match=r"`monitor` must be a metric that the model logs; after its first"
                       r" validation it logs \['val_loss'\], got 'val_accuracy'"):
        _fit_monitoring("val_accuracy", model)
    assert model.trainer.global_step == 4 and model.validations == 1  # one epoch, one validation


class EpochLogged(Net):
    """Logs its training loss per epoch only: the metric exists at the training epoch's end, after validation."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss


def test_a_training_epoch_metric_is_not_refused_at_the_first_validation() -> None:
    trainer = _fit_monitoring("train_loss", EpochLogged())
    assert trainer.current_epoch == 8


def test_bad_arguments() -> None:
    trial = optuna.create_study().ask()
    with pytest.raises(ArgumentError, match="max_half_cycle_epochs"):
        suggest_cycle(trial, min_half_cycle_epochs=4, max_half_cycle_epochs=2)
    with pytest.raises(ArgumentError, match="step_size_up"):
        suggest_cycle(trial, min_half_cycle_epochs=1, max_half_cycle_epochs=2, step_size_up=10)
    with pytest.raises(ArgumentError, match="monitor"):
        CyclePruningCallback(trial, monitor="")
    clr = suggest_cycle(trial, min_half_cycle_epochs=1, max_half_cycle_epochs=2)
    assert isinstance(clr, CyclicLearningRate) and clr.half_cycle_epochs == trial.params["half_cycle_epochs"]


def test_without_a_cyclic_learning_rate_the_callback_says_so() -> None:
    trial = optuna.create_study().ask()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=[CyclePruningCallback(trial)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="CyclePruningCallback judges at the cycle ends .*needs exactly one"):
        trainer.fit(Net(), datamodule=DM())


# ---------------------------------------------------------------------------------------------- DDP
def run_worker(out: Path, strategy: str, torchrun: bool = False, n_trials: int = 3, *extra: str) -> None:
    cmd = [sys.executable, str(WORKER), "--out", str(out), "--strategy", strategy, "--n-trials", str(n_trials),
           *extra]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", *cmd[1:]]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def check_ranks(out: Path, n_trials: int) -> None:
    rows = {int(p.stem[4:]): [json.loads(line) for line in p.read_text().splitlines()] for p in out.glob("rank*.jsonl")}
    trials = json.loads((out / "study.json").read_text())
    seen = f"{rows}\n{trials}"
    assert set(rows) == {0, 1} and len(rows[0]) == len(rows[1]) == n_trials, seen
    assert len(trials) == n_trials, seen  # one trial per fit, not one per rank
    for r0, r1 in zip(rows[0], rows[1]):
        assert r0["world_size"] == 2
        for key in ("step_size_up", "half_cycle_epochs", "epochs", "max_epochs", "first_weight"):
            assert r0[key] == r1[key], (key, seen)  # rank 1 trained rank 0's suggestion
    assert [r["half_cycle_epochs"] for r in rows[0]] == [t["params"]["half_cycle_epochs"] for t in trials], seen
    assert rows[0][0]["step_size_up"] == 2 * 4 // 2, seen  # h = 2 epochs of 2 steps per rank (64 / 2 / 16)
    last = trials[-1]
    assert last["state"] == "PRUNED" and list(last["intermediate"]) == ["2"], seen  # its first cycle end
    assert rows[0][-1]["epochs"] == rows[1][-1]["epochs"] == 2, seen  # every rank stopped there


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("strategy", "torchrun"), [("ddp", False), ("ddp", True), ("ddp_spawn", False)],
                         ids=["ddp", "torchrun", "ddp_spawn"])
def test_own_objective_under_ddp(tmp_path: Path, strategy: str, torchrun: bool) -> None:
    run_worker(tmp_path, strategy, torchrun=torchrun)
    check_ranks(tmp_path, 3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_own_objective_under_ddp_without_bounds_runs_one_range_test(tmp_path: Path) -> None:
    """Rank 0 alone reads the study's stored bounds: every rank takes them, so no rank runs a range test alone
    (one rank in a collective sweep would hang the other)."""
    run_worker(tmp_path, "ddp", False, 3, "--no-bounds")
    check_ranks(tmp_path, 3)
    lines = (tmp_path / "range_tests.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len({json.loads(line)["pid"] for line in lines}) == 2  # the first trial, both ranks
    rows = [json.loads(line) for p in tmp_path.glob("rank*.jsonl") for line in p.read_text().splitlines()]
    assert len({(json.dumps(r["base_lr"]), json.dumps(r["max_lr"])) for r in rows}) == 1  # one pair, every fit


def _four_own_objectives(tmp_path: Path, storage: str, name: str) -> None:
    """Four single-process workers of a hand-written objective (``suggest_cycle`` without bounds), released at
    once on one study: one range test in the whole study, one bound pair in every fit, the others waited."""
    args = ["--strategy", "auto", "--devices", "1", "--n-trials", "1", "--no-bounds", "--storage", storage,
            "--study-name", name, "--sleep", "0.2", "--start-with", str(tmp_path / "barrier"), "4"]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--out", str(tmp_path / f"w{i}"), *args], env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    outs = [p.communicate(timeout=280)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    tests = [line for path in tmp_path.glob("w*/range_tests.jsonl") for line in path.read_text().splitlines()]
    assert len(tests) == 1, (tests, outs)  # before: a range test in every trial, silently
    assert sum("suggest_cycle: worker" in out and "waiting for its bounds" in out for out in outs) >= 1, outs
    assert sum("reuses the study's LR bounds" in out for out in outs) == 3, outs  # the line that says so
    rows = [json.loads(line) for p in tmp_path.glob("w*/rank0.jsonl") for line in p.read_text().splitlines()]
    assert len(rows) == 4 and len({(json.dumps(r["base_lr"]), json.dumps(r["max_lr"])) for r in rows}) == 1, rows


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["journal", pytest.param("postgresql", marks=needs_pg)])
def test_four_own_objectives_share_one_range_test(tmp_path: Path, where: str, request: pytest.FixtureRequest) -> None:
    if where == "journal":
        _four_own_objectives(tmp_path, str(tmp_path / "shared.journal"), "own4")
    else:  # a fresh study name on the test database, deleted afterwards
        _four_own_objectives(tmp_path, PG_URL, request.getfixturevalue("pg_study_name"))
