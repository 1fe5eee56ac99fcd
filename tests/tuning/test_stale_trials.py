"""Workers judging each other's trials stale (issue 21, item 1): each trial is judged against the heartbeat its
OWN worker declared, a stalled worker comes back and goes on, and workers starting together on an empty
PostgreSQL database all get their tables (item 5). Real worker processes, real signals, the real PostgreSQL."""

from __future__ import annotations

import datetime
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import optuna
import pytest
from optuna.trial import TrialState
from tuning_helpers import PG_ADMIN_URL, PG_URL, needs_pg, tune, worker, worker_results

from lightning_clr.tuning._storage import database_url


def _journal(path: Path, name: str) -> Callable[[], Any]:
    return lambda: optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path))))


def _wait_running(proc: Any, load: Callable[[], Any], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            if load().get_trials(states=(TrialState.RUNNING,)):
                return
        except KeyError:  # the study does not exist yet
            continue
    raise AssertionError("the worker never started a trial")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_with_a_short_heartbeat_does_not_fail_a_slower_workers_live_trial(tmp_path: Path) -> None:
    """Worker A beats every 30 s (grace 120 s); worker B, started later, beats every 0.5 s (grace 2 s). B's
    sweep must judge A's trial by A's declared grace: before the fix B failed it (A's last beat was > 2 s old)
    and A died with UpdateFinishedTrialError, losing its second trial."""
    storage = tmp_path / "mixed.journal"
    load = _journal(storage, "mixed")
    common = ["--storage", str(storage), "--study-name", "mixed", "--no-warm-start", "--max-half", "1"]
    slow = worker(tmp_path / "a", *common, "--heartbeat", "30", "--n-trials", "2", "--sleep", "0.2",
                  "--max-epochs", "16", wait=False)
    _wait_running(slow, load)
    time.sleep(3.0)  # A's only beat so far is older than B's grace period
    fast = worker(tmp_path / "b", *common, "--heartbeat", "0.5", "--grace", "2", "--n-trials", "1")
    assert "marked stale" not in fast.stdout + fast.stderr
    out, _ = slow.communicate(timeout=240)
    assert slow.returncode == 0, out[-4000:]
    trials = load().trials
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials]
    # B swept (just before its trial) while A's first trial was RUNNING and silent for more than B's grace
    # (A's one beat is at its start): had A finished before B started, the test would prove nothing
    first = min(trials, key=lambda t: t.number)
    silent_from, done = first.datetime_start + datetime.timedelta(seconds=2), first.datetime_complete
    assert any(silent_from < t.datetime_start < done for t in trials if t is not first), [
        (t.number, t.datetime_start, t.datetime_complete) for t in trials]


def _wait_stopped(proc: Any, timeout: float = 120) -> None:
    """Until the worker has stopped itself (``--stop-at``): state ``T`` in ``/proc/PID/stat``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.2)
    raise AssertionError("the worker never stopped itself")


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_pg
@pytest.mark.parametrize("stop_at", ["fit", "ask"])
def test_a_stopped_worker_comes_back_and_goes_on_without_counting_its_trial_twice(
    tmp_path: Path, pg_study_name: str, stop_at: str
) -> None:
    """Worker A stops (SIGSTOP) longer than its grace period, in epoch 1 of its first trial (``fit``) or inside
    ``study.ask`` after the trial was created, before it has a parameter or a heartbeat (``ask``: CI found this
    one, A died with UpdateFinishedTrialError). Worker B fails A's trial as stale. On SIGCONT, A warns once and
    goes on: after ``fit`` with its next trial, after ``ask`` with a new trial in place of the lost one. The failed
    trial stays FAIL (A never writes to it again), nothing is left RUNNING and no trial is duplicated."""
    load = lambda: optuna.load_study(study_name=pg_study_name, storage=database_url(PG_URL))  # noqa: E731
    common = ["--storage", PG_URL, "--study-name", pg_study_name, "--no-warm-start", "--max-half", "1",
              "--heartbeat", "0.5", "--grace", "2"]
    a = worker(tmp_path / "a", *common, "--n-trials", "2", "--max-epochs", "4", "--stop-at", stop_at, wait=False)
    _wait_stopped(a)
    try:
        b = worker(tmp_path / "b", *common, "--n-trials", "1")  # sweeps before its trial: A's is stale
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert "marked stale RUNNING trials [0]" in b.stdout + b.stderr
    out, _ = a.communicate(timeout=240)
    assert a.returncode == 0, out[-4000:]
    lost = {"fit": "was finished by another worker while it trained here",
            "ask": "was finished by another worker before it started here"}
    assert [out.count(lost["fit"]), out.count(lost["ask"])] == ([1, 0] if stop_at == "fit" else [0, 1]), out[-4000:]
    trials = sorted(load().trials, key=lambda t: t.number)
    # fit: A trained trials 0 (lost) and 2, B trial 1; ask: A asked again, so it trained 2 and 3 besides
    assert [t.number for t in trials] == ([0, 1, 2] if stop_at == "fit" else [0, 1, 2, 3])
    assert trials[0].state == TrialState.FAIL and "stale" in trials[0].user_attrs["error"]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials[1:])
    mine = worker_results(tmp_path / "a")[0]["trials"]
    assert [t["state"] for t in mine if t["number"] == 0] == ["FAIL"]


# ---------------------------------------------------------------------------------------------- item 5
@pytest.fixture
def fresh_database() -> Any:
    """A new, empty PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"lclr_fresh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_pg
def test_four_workers_starting_together_on_an_empty_database(tmp_path: Path, fresh_database: str) -> None:
    """Four real workers create Optuna's tables at the same instant (once all four have imported torch and
    Lightning); before the fix most of them died with StorageError: UniqueViolation. All four must finish their
    trial."""
    args = ["--storage", fresh_database, "--study-name", "together", "--n-trials", "1", "--max-epochs", "2",
            "--max-half", "1", "--no-warm-start", "--start-with", str(tmp_path / "barrier"), "4"]
    procs = [worker(tmp_path / f"w{i}", *args, "--seed", str(i), wait=False) for i in range(4)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name="together", storage=database_url(fresh_database))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]


class PartialSweep(pl.Callback):
    """Another worker's sweep that wrote its `error` on the running trial and then stopped (the database went
    away, the worker was killed) before it could mark the trial FAIL: a real write to the shared journal."""

    def __init__(self, journal: str) -> None:
        self.journal = journal

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        study = _journal(Path(self.journal), "partial")()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "error", "stale: no heartbeat for 9 s (> ...)")


def test_a_sweep_that_never_failed_the_trial_leaves_no_error_behind(tmp_path: Path) -> None:
    """Seen in the chaos run: a trial that completed kept another worker's half-done "stale" error (and before
    this fix, its owner then told it FAIL although it trained to the end)."""
    journal = str(tmp_path / "partial.journal")
    result = tune(tmp_path, n_trials=1, storage=journal, study_name="partial",
                  trainer_kwargs={"accelerator": "cpu", "callbacks": [PartialSweep(journal)]})
    (trial,) = result.study.trials
    assert trial.state == TrialState.COMPLETE and not trial.user_attrs.get("error"), trial.user_attrs
    assert result.trials()[0]["error"] is None


@needs_pg
def test_table_creation_that_keeps_failing_gives_up_after_its_tries_in_one_line(fresh_database: str) -> None:
    """The retry is bounded: a database where creating Optuna's tables always meets an object of the same name
    (here an index named as Optuna's, on another table: a real DuplicateTable on every try, since the failed
    creation rolls back) gives one StorageError line saying how many tries it took, not a loop."""
    import psycopg

    from lightning_clr.tuning._storage import TABLE_CREATION_TRIES, StorageError, make_storage

    with psycopg.connect(fresh_database, autocommit=True) as db:
        db.execute("CREATE TABLE decoy (x integer)")
        db.execute("CREATE INDEX ix_studies_study_name ON decoy (x)")  # Optuna's name for its studies index
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        make_storage(fresh_database)
    message = str(info.value)
    assert "\n" not in message and f"creating Optuna's tables, {TABLE_CREATION_TRIES} tries" in message, message
    assert "ix_studies_study_name" in message and "already exists" in message, message
    assert time.monotonic() - started < 60  # bounded: a few short waits between the tries
