"""A database outage is waited out (lightning_clr/tuning/_reconnect.py), on the real PostgreSQL server: each
test gets a database of its own, which is made to refuse connections (``ALLOW_CONNECTIONS false``, its backends
terminated) for a few seconds; a proxy cuts a connection right after a COMMIT reached the server, before its answer
came back (the write that may or may not have happened)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
from optuna.trial import TrialState
from tuning_helpers import PG_ADMIN_URL, needs_pg, worker

from lightning_clr.tuning import StorageError
from lightning_clr.tuning._reconnect import TOKEN_KEY, TWIN_ERROR, ReconnectingStorage, transient
from lightning_clr.tuning._storage import make_storage, storage_errors

pytestmark = needs_pg


def _admin(*statements: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def own_db() -> Iterator[str]:
    """The name of a fresh database, dropped after the test."""
    name = f"lclr_outage_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield name
    _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _url(db: str, port: int = 5432) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{db}?sslmode=disable"


def outage(db: str, seconds: float) -> threading.Thread:
    """The database refuses connections, and every open one is cut, for ``seconds`` (from a thread)."""
    _admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false',
           f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")

    def end() -> None:
        time.sleep(seconds)
        _admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')

    thread = threading.Thread(target=end, daemon=True)
    thread.start()
    return thread


class CuttingProxy:
    """A TCP proxy to the server that, once armed with a statement (``arm(b"INSERT INTO trials")``), forwards the
    next COMMIT that follows that statement on a connection, and then cuts that connection without passing the
    server's answer back: the client cannot know whether its write happened (it did)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.statement = b""
        self.cuts = 0
        self.on_cut: Any = None  # called once the connection is cut
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", 5432))
            muted = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, muted, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, muted, False), daemon=True).start()

    def arm(self, statement: bytes) -> None:
        self.statement = statement
        self.armed.set()

    def _pump(self, src: socket.socket, dst: socket.socket, muted: threading.Event, to_server: bool) -> None:
        seen = False  # the armed statement went through this connection since its last COMMIT
        try:
            while data := src.recv(65536):
                if not to_server and muted.is_set():
                    continue  # the COMMIT's answer is lost
                dst.sendall(data)
                seen = to_server and self.armed.is_set() and (seen or self.statement in data)
                if seen and b"COMMIT" in data[data.find(self.statement) + 1:]:
                    self.armed.clear()
                    muted.set()
                    time.sleep(0.5)  # the server commits; then the connection dies
                    self.cuts += 1
                    if self.on_cut is not None:
                        self.on_cut()
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def test_an_outage_is_waited_out_and_the_study_goes_on(own_db: str) -> None:
    storage = make_storage(_url(own_db), patience=60.0)
    assert isinstance(storage, ReconnectingStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    first = study.ask()
    down = outage(own_db, 3.0)
    start = time.monotonic()
    study.tell(first, 1.0)  # during the outage: it waits, then succeeds
    second = study.ask()
    study.tell(second, 2.0)
    down.join()
    assert time.monotonic() - start > 2.0  # it did meet the outage
    trials = study.get_trials(deepcopy=False)
    assert [(t.number, t.state, t.value) for t in trials] == [(0, TrialState.COMPLETE, 1.0),
                                                              (1, TrialState.COMPLETE, 2.0)]


def test_a_storage_just_built_waits_out_an_outage_at_its_first_call(own_db: str) -> None:
    """Building it connected (Optuna creates its tables), so the server is known to exist: not a wrong URL."""
    storage = make_storage(_url(own_db), patience=60.0)
    down = outage(own_db, 3.0)
    study = optuna.create_study(storage=storage, study_name="s")  # during the outage
    down.join()
    study.tell(study.ask(), 1.0)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_an_outage_longer_than_the_patience_is_one_storage_error(own_db: str) -> None:
    storage = make_storage(_url(own_db), patience=1.0)
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()
    down = outage(own_db, 6.0)
    start = time.monotonic()
    with pytest.raises(StorageError) as caught, storage_errors(storage):
        study.ask()
    assert time.monotonic() - start < 5.0
    assert own_db in str(caught.value) and "\n" not in str(caught.value)
    down.join()


def test_no_patience_means_no_wrapper_and_a_wrong_url_is_not_waited_for(own_db: str) -> None:
    assert not isinstance(make_storage(_url(own_db), patience=0.0), ReconnectingStorage)
    start = time.monotonic()
    with pytest.raises(StorageError):
        make_storage(_url(own_db, port=9), patience=60.0)  # nothing listens on port 9
    assert time.monotonic() - start < 20.0


def test_a_cut_commit_is_not_applied_twice(own_db: str) -> None:
    proxy = CuttingProxy()
    storage = make_storage(_url(own_db, proxy.port), patience=30.0)
    study = optuna.create_study(storage=storage, study_name="s")
    study.tell(study.ask(), 0.0)
    proxy.arm(b"INSERT INTO trials ")
    trial = study.ask()  # its creation's COMMIT is cut: retried (by Optuna or by the wrapper), then de-twinned
    assert proxy.cuts == 1
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert [t.number for t in running] == [trial.number]
    twins = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert all(t.user_attrs["error"].startswith(f"{TWIN_ERROR} {trial.number}") for t in twins)
    assert all(t.system_attrs[TOKEN_KEY] == running[0].system_attrs[TOKEN_KEY] for t in twins)
    proxy.arm(b"UPDATE trials SET state")
    study.tell(trial, 0.5)  # the finish's COMMIT is cut: the retry finds it done instead of failing
    assert proxy.cuts == 2
    assert storage.get_trial(running[0]._trial_id).state == TrialState.COMPLETE
    assert study.trials[trial.number].value == 0.5


def test_a_cut_creation_followed_by_an_outage_is_looked_up_once_the_server_is_back(own_db: str) -> None:
    """The lookup of the cut creation's trial meets the outage too: it waits as well (Optuna's own 5 retries of
    the creation fail within the 15 s outage, then the wrapper's lookup runs while the server still refuses)."""
    proxy = CuttingProxy()
    storage = make_storage(_url(own_db, proxy.port), patience=60.0)
    study = optuna.create_study(storage=storage, study_name="s")
    study.tell(study.ask(), 0.0)
    down: list[threading.Thread] = []
    proxy.on_cut = lambda: down.append(outage(own_db, 15.0))
    proxy.arm(b"INSERT INTO trials ")
    trial = study.ask()
    down[0].join()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert [t.number for t in running] == [trial.number]
    assert all(t.user_attrs["error"].startswith(TWIN_ERROR) for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.FAIL)


def test_only_lost_connections_are_retried() -> None:
    import psycopg

    assert transient(optuna.exceptions.StorageInternalError("x").with_traceback(None)) is False
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = psycopg.OperationalError("connection refused")
    assert transient(wrapped)
    assert not transient(ValueError("a bad value"))
    assert not transient(psycopg.errors.UniqueViolation("duplicate key"))


@pytest.mark.slow
def test_a_worker_survives_an_outage_mid_trial(own_db: str, tmp_path: Path) -> None:
    url = _url(own_db)
    proc = worker(tmp_path / "w", "--storage", url, "--study-name", "s", "--n-trials", "3", "--sleep", "0.15",
                  "--heartbeat", "1", "--grace", "4", "--max-epochs", "4", wait=False)
    study = _wait_for_running(url, proc)
    down = outage(own_db, 8.0)
    out, _ = proc.communicate(timeout=240)
    down.join()
    assert proc.returncode == 0, out[-4000:]
    assert "lost its connection" in out and "answers again" in out
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]


def _wait_for_running(url: str, proc: Any) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            study = optuna.load_study(study_name="s", storage=make_storage(url, patience=0.0))
            if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return study
        except (KeyError, StorageError, optuna.exceptions.StorageInternalError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no trial started: {proc.communicate()[0][-3000:]}")
