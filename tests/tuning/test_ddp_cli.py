"""tune_cycle_length under ddp, torchrun and ddp_spawn (2 gloo ranks), and `lightning-clr tune` as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from processes import clean_env
from tuning_helpers import (
    ROOT,
    WORKER,
    rank_rows,
    worker,
    worker_results,
)


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_naive_per_rank_ask_records_a_trial_per_rank_that_only_rank_0_trained(tmp_path: Path) -> None:
    """The optuna-integration failure, reproduced honestly: every rank asks for its own trial. The callback's
    plan broadcast keeps the replicas in step (rank 1 follows rank 0's cycle, with a warning), but the study
    still holds one trial per rank, and rank 1's trial names a cycle that nobody trained: only rank-0
    ownership of the trial (CyclePruningCallback, tune_cycle_length) gets the study right."""
    import optuna

    worker(tmp_path, "--mode", "naive", "--strategy", "ddp", "--devices", "2")
    rows = rank_rows(tmp_path)
    assert set(rows) == {0, 1}
    assert rows[0][0]["step_size_up"] == rows[1][0]["step_size_up"]
    assert rows[0][0]["first_weight"] == rows[1][0]["first_weight"]  # the replicas stay in step
    backend = optuna.storages.journal.JournalFileBackend(str(tmp_path / "naive.journal"))
    storage = optuna.storages.JournalStorage(backend)
    trials = optuna.load_study(study_name="naive", storage=storage).get_trials()
    assert sorted(t.params["half_cycle_epochs"] for t in trials) == [2, 4]  # two trials for one fit


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
    """The monitored metric is missing: every rank raises together instead of hanging (since issue 21 after the
    first validation, where every rank sees the same logged names)."""
    cmd = [sys.executable, str(WORKER), "--out", str(tmp_path), "--strategy", "ddp", "--devices", "2",
           "--n-trials", "1", "--monitor", "val_missing"]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "`monitor` must be a metric that the model logs; after its first validation it logs ['val_loss'], got" \
        " 'val_missing'" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_spawn_keeps_the_study(tmp_path: Path) -> None:
    """In-memory storage cannot cross into spawned children: a journal file under output_dir is used."""
    spawn_args = ("--devices", "2", "--n-trials", "2", "--max-half", "2", "--max-epochs", "8", "--bad-from-fit", "1",
                  "--n-startup-trials", "1")  # two trials: each spawn costs ~25 s here
    worker(tmp_path, "--strategy", "ddp_spawn", *spawn_args)
    _check_ddp(tmp_path, 2)
    assert (tmp_path / "tuning" / "study.journal").exists()


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


