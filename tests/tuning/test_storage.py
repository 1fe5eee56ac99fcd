"""tune_cycle_length's storages: journal and PostgreSQL workers sharing a study, killed workers and the
heartbeat, plain database URLs, storage faults as one line (a real PostgreSQL at 127.0.0.1:5432)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from tuning_helpers import (
    PG_URL,
    Net,
    needs_pg,
    tune,
    worker,
)

from lightning_clr.tuning._storage import database_url  # direct Optuna calls: the driver the tuner would use


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
    loaded = optuna.load_study(study_name=pg_study_name, storage=database_url(PG_URL))
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
    optuna.create_study(study_name=pg_study_name, storage=database_url(PG_URL), direction="minimize")  # created ahead
    _two_workers(tmp_path, PG_URL, pg_study_name)
    study = optuna.load_study(study_name=pg_study_name, storage=database_url(PG_URL))
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
                                                                                storage=database_url(PG_URL)))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["fit", "build"])
def test_a_live_trial_past_the_grace_period_is_not_failed_by_another_workers_sweep(tmp_path: Path, where: str) -> None:
    """Issue 11's blind spot: a tuner that never wrote its heartbeat would pass the kill tests (the dead
    worker's trial is old either way) but would have its live trials failed by every other worker. The sweep
    falls while the slow worker trains (``fit``) or while it builds its trial's model (``build``, until the sweeper
    is done: the heartbeat used to start only with the fit, so a model that took longer than the grace period to
    build was failed)."""
    storage = str(tmp_path / "live.journal")

    def load() -> Any:
        return optuna.load_study(study_name="live", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage)))

    args = ["--storage", storage, "--study-name", "live", "--heartbeat", "0.5", "--grace", "2", "--no-warm-start",
            "--n-trials", "1"]
    built = tmp_path / "build_done"  # `build`: the slow worker's first trial model is built once this exists
    slow_args = {"fit": ["--sleep", "0.2", "--max-epochs", "24"],
                 "build": ["--build-until", str(built), "--max-epochs", "2"]}[where]
    slow = worker(tmp_path / "slow", *args, *slow_args, "--max-half", "1", wait=False)
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
    try:
        sweeper = worker(tmp_path / "sweeper", *args)  # sweeps stale RUNNING trials before its own trial
    finally:
        built.touch()  # the whole sweeper ran while the slow worker was still building its trial's model
    assert "marked stale" not in sweeper.stdout + sweeper.stderr
    out, _ = slow.communicate(timeout=240)
    assert slow.returncode == 0, out[-4000:]
    first, second = sorted(load().trials, key=lambda t: t.number)
    assert first.state == TrialState.COMPLETE and "error" not in first.user_attrs, first.user_attrs
    assert second.state == TrialState.COMPLETE
    assert (first.datetime_complete - first.datetime_start).total_seconds() > 2 * 2  # it really outlived grace
    assert second.datetime_start < first.datetime_complete  # the sweep (just before it) saw the first RUNNING


# ---------------------------------------------------------------------------------------------- storage faults
def test_plain_database_urls_get_an_installed_driver() -> None:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3 and mysql:// to mysqlclient: the [tune] extra brings
    psycopg 3 and PyMySQL, and a plain mysql:// URL is mapped to PyMySQL when mysqlclient is missing."""
    import importlib.util

    # psycopg 3 with Optuna 5; psycopg2 with Optuna 4, whose enum columns psycopg 3's typed binding breaks
    pg = "postgresql+psycopg" if int(optuna.__version__.split(".")[0]) >= 5 else "postgresql+psycopg2"
    assert database_url("postgresql://u@h/db") == f"{pg}://u@h/db"
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
    """Before: "invalid data in the commit, e.g. exceeding max length"; the real cause only in the chain. An outage
    longer than ``storage_patience`` (here 2 s; tests/tuning/test_reconnect.py waits out shorter ones)."""
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
                 n_trials=2, storage_patience=2.0)
        message = str(info.value)
        assert "\n" not in message and db in message, message
        assert "invalid data in the commit" not in message, message
        causes = ("terminating connection due to administrator command", "not currently accepting connections",
                  "server closed the connection unexpectedly")  # psycopg 3, and psycopg2 (under Optuna 4)
        assert any(cause in message for cause in causes), message
        admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        (trial,) = optuna.load_study(study_name="cut", storage=database_url(url)).trials
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




# ---------------------------------------------------------------- the heartbeat, in process (fast)
def test_the_heartbeat_keeps_a_running_trial_alive_and_its_absence_fails_it(tmp_path: Path) -> None:
    """The fast twin of the killed-worker tests: the same Heartbeat thread and stale-trial sweep, on a real
    journal storage, in this process."""
    from lightning_clr.tuning._storage import HEARTBEAT_KEY, Heartbeat, fail_stale_trials, make_storage

    study = optuna.create_study(storage=make_storage(str(tmp_path / "beat.journal")), study_name="beat")
    live, dead = study.ask(), study.ask()
    storage = study._storage
    with Heartbeat(storage, live._trial_id, interval=0.05):
        first = storage.get_trial(live._trial_id).system_attrs[HEARTBEAT_KEY]
        time.sleep(1.5)
        later = storage.get_trial(live._trial_id).system_attrs[HEARTBEAT_KEY]
        assert later > first  # it beats while the block runs, not only on entry
        assert fail_stale_trials(study, grace_period=1.0) == [dead.number]  # no heartbeat, started 1.5 s ago
    assert storage.get_trial(live._trial_id).state == TrialState.RUNNING
    stopped = storage.get_trial(live._trial_id).system_attrs[HEARTBEAT_KEY]
    time.sleep(1.5)
    assert storage.get_trial(live._trial_id).system_attrs[HEARTBEAT_KEY] == stopped  # the thread has ended
    assert fail_stale_trials(study, grace_period=1.0) == [live.number]
    assert "no heartbeat" in storage.get_trial(live._trial_id).user_attrs["error"]


def test_a_stall_that_every_worker_shares_does_not_fail_a_live_trial(tmp_path: Path) -> None:
    """A journal lock left behind (as a SIGKILLed worker leaves it) stalls every writer: the live trial's
    heartbeat cannot be written for longer than its grace period. A sweep taken during the stall sees a silent
    trial; its second look, after the lock is gone, sees the heartbeat move again, so the trial stays RUNNING.
    Without the second look (``recheck=False``) the same stall fails the live trial."""
    import threading

    from optuna.storages.journal import JournalFileSymlinkLock

    from lightning_clr.tuning._storage import Heartbeat, fail_stale_trials, make_storage

    path = str(tmp_path / "stall.journal")
    study = optuna.create_study(storage=make_storage(path), study_name="stall")
    judge = optuna.load_study(storage=make_storage(path), study_name="stall")  # another worker's own storage

    def stall(seconds: float) -> threading.Thread:
        lock = JournalFileSymlinkLock(path)  # the journal's own lock file: every writer waits for it
        assert lock.acquire()

        def hold() -> None:
            time.sleep(seconds)
            lock.release()

        thread = threading.Thread(target=hold)
        thread.start()
        return thread

    for recheck, failed in ((True, False), (False, True)):
        live = study.ask()
        with Heartbeat(study._storage, live._trial_id, interval=0.5, grace=1.0):
            held = stall(1.8)  # the heartbeat's writes wait behind the lock from now on
            time.sleep(1.4)  # silent for longer than the trial's grace period (1 s); the second look comes 2 s on
            started = time.monotonic()
            assert fail_stale_trials(judge, grace_period=1.0, recheck=recheck) == ([live.number] if failed else [])
            if recheck:  # the first look did suspect it: only a suspect makes the sweep wait for a second look
                assert time.monotonic() - started >= 2.0
            held.join()
            state = study._storage.get_trial(live._trial_id).state
        assert state == (TrialState.FAIL if failed else TrialState.RUNNING)
        if not failed:
            study.tell(live, 1.0)
