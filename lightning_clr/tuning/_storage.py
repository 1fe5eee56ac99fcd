"""Optuna storages for :func:`lightning_clr.tune_cycle_length`: choosing one from a string (plain
``postgresql://`` and ``mysql://`` URLs get the driver that is installed), storage faults as one line naming
the storage and the real cause, a trial heartbeat that works for every persistent storage, and the sweep that
fails trials of dead workers.

Optuna's own heartbeat exists only for RDB storages and only inside ``study.optimize``; the tuner uses
ask-and-tell (rank 0 alone talks to Optuna), so it keeps its own heartbeat in a trial system attribute.
Only imported once optuna is known to be installed.

Example:
    >>> storage = make_storage("postgresql://postgres@127.0.0.1:5432/test")  # doctest: +SKIP
    >>> with storage_errors(storage):  # doctest: +SKIP
    ...     study = optuna.create_study(storage=storage, study_name="clr", load_if_exists=True)
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import random
import re
import threading
import time
from typing import Any, Iterator, Optional

import optuna
from optuna.trial import TrialState

from lightning_clr._validation import ArgumentError, learning_rate, short_repr
from lightning_clr.tuning._optuna import storage_of, trial_id_of
from lightning_clr.tuning._reconnect import reconnecting

HEARTBEAT_KEY = "lightning_clr:heartbeat"
# What the trial's own worker declared when it started the trial: a trial is judged stale against these, not
# against the judging worker's own settings (workers of one study may beat at different intervals).
INTERVAL_KEY = "lightning_clr:heartbeat_interval"
GRACE_KEY = "lightning_clr:grace_period"
RECHECK_CAP = 60.0  # seconds a sweep waits at most for a seemingly dead trial's next heartbeat
TABLE_CREATION_TRIES = 6
DEFAULT_PATIENCE = 120.0  # seconds a database's lost connection is waited out (StudyConfig.storage_patience)
STALE_PREFIX = "stale:"  # the start of the `error` a sweep writes before it fails a trial

# SQLAlchemy 2.1's default driver of each URL scheme, then the others it knows, as (dialect+driver, module).
_DRIVERS = {
    "postgresql": (("postgresql+psycopg", "psycopg"), ("postgresql+psycopg2", "psycopg2"),
                   ("postgresql+pg8000", "pg8000")),
    "mysql": (("mysql+mysqldb", "MySQLdb"), ("mysql+pymysql", "pymysql"), ("mysql+mysqlconnector", "mysql.connector")),
}


class StorageError(RuntimeError):
    """The study's storage failed: a database that refuses connections, a journal that cannot be written.

    Its message is one line: the storage (password hidden) and the real cause from the exception chain.
    """


def database_url(url: str) -> str:
    """A plain ``postgresql://`` or ``mysql://`` URL with the driver that is installed, SQLAlchemy's default
    first (psycopg 3 and mysqlclient; psycopg2 first under Optuna 4, whose schema psycopg 3 cannot query); any
    other URL unchanged.

    Example:
        >>> database_url("sqlite:///tune.db")
        'sqlite:///tune.db'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _DRIVERS:
        return url
    drivers = _DRIVERS[scheme]
    if scheme == "postgresql" and _optuna_major() < 5:
        # Optuna 4's schema compares its enum columns with bound strings, which psycopg 3 sends typed (server-side
        # binding): "operator does not exist: trialvaluetype = character varying". psycopg2 binds client-side.
        drivers = sorted(drivers, key=lambda d: d[1] != "psycopg2")
    for dialect, module in drivers:
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            return f"{dialect}://{rest}"
    return url  # SQLAlchemy's own error then names the missing module


def _optuna_major() -> int:
    try:
        return int(optuna.__version__.split(".")[0])
    except ValueError:
        return 5


def make_storage(spec: Any, patience: float = DEFAULT_PATIENCE) -> Any:
    """``None`` → in memory; a string with ``://`` → an RDB URL (a server's waits out a lost connection for up to
    ``patience`` seconds, see :mod:`lightning_clr.tuning._reconnect`); any other string → a journal file path;
    an Optuna storage object as it is."""
    if spec is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(spec, optuna.storages.BaseStorage):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"`storage` must be None, a journal file path or a database URL, got {spec!r}")
    if "://" in spec:
        storage = _rdb_storage(spec)
        if spec.startswith("sqlite"):  # a local file: no server to wait for
            return storage
        return reconnecting(storage, patience, f"storage {storage_name(spec)!r}")
    with storage_errors(spec):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(spec))


def _rdb_storage(url: str) -> Any:
    """Optuna's RDBStorage of ``url``. Workers that start together on an empty database all create Optuna's
    tables at once, and all but one can fail (PostgreSQL: ``UniqueViolation`` on ``pg_type``, a duplicate
    version row): such a failure is retried a few times, after which the tables exist."""
    for attempt in range(1, TABLE_CREATION_TRIES + 1):
        try:
            with storage_errors(url):
                # pre-ping: a pooled connection that the server cut (a restart) is replaced before it is used
                return optuna.storages.RDBStorage(database_url(url), engine_kwargs={"pool_pre_ping": True})
        except StorageError as err:
            if attempt == TABLE_CREATION_TRIES or not _concurrent_creation(err):
                if attempt > 1:
                    raise StorageError(f"{err} (creating Optuna's tables, {attempt} tries)") from err.__cause__
                raise
            time.sleep(0.2 * attempt + random.uniform(0.0, 0.5))  # the other workers finish their creation
    raise AssertionError("unreachable")


def _concurrent_creation(err: BaseException) -> bool:
    """A fault of concurrent first use: another process created the same table, type or row meanwhile."""
    cause = _root_cause(err)
    text = str(cause).lower()
    names = ("UniqueViolation", "DuplicateTable", "DuplicateObject", "IntegrityError")
    return type(cause).__name__ in names or "already exists" in text or "duplicate key" in text


def storage_name(storage: Any) -> str:
    """The storage as a user wrote it, without a password."""
    for _ in range(4):  # Optuna's _CachedStorage wraps the RDBStorage, JournalStorage its file backend
        if isinstance(storage, str) or hasattr(storage, "url") or hasattr(storage, "_file_path"):
            break
        storage = getattr(storage, "_backend", storage)
    if isinstance(storage, str):
        name = storage
    elif hasattr(storage, "url"):
        name = str(storage.url)
    else:
        name = str(getattr(storage, "_file_path", type(storage).__name__))
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", name)


def _root_cause(err: BaseException) -> BaseException:
    """The deepest exception of the chain, skipping Optuna's and SQLAlchemy's wrappers."""
    seen = [err]
    while (seen[-1].__cause__ or seen[-1].__context__) is not None and len(seen) < 20:
        seen.append(seen[-1].__cause__ or seen[-1].__context__)  # type: ignore[arg-type]
    for candidate in reversed(seen):
        orig = getattr(candidate, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the driver's
        if isinstance(orig, BaseException):
            return orig
    return seen[-1]


def describe(storage: Any, err: BaseException) -> str:
    cause = _root_cause(err)
    text = " ".join(str(cause).split()) or type(cause).__name__
    return f"storage {storage_name(storage)!r} failed: {type(cause).__name__}: {text}"[:500]


def _is_storage_fault(err: BaseException) -> bool:
    if isinstance(err, (OSError, optuna.exceptions.StorageInternalError)):
        return True
    return type(err).__module__.startswith(("sqlalchemy", "psycopg", "pymysql", "MySQLdb", "pg8000"))


@contextlib.contextmanager
def storage_errors(storage: Any) -> Iterator[None]:
    """Turn a fault of ``storage`` (an OSError, a database error, Optuna's StorageInternalError) into one
    :class:`StorageError` line; anything else passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        if not _is_storage_fault(err):
            raise
        raise StorageError(describe(storage, err)) from err


def beat(storage: Any, trial_id: int) -> None:
    storage.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())


class Heartbeat:
    """A daemon thread that records ``time.time()`` on a trial every ``interval`` seconds.

    On entering, the trial also gets this worker's ``interval`` and ``grace`` (default ``4 * interval``): other
    workers judge the trial stale against these, whatever their own settings.

    Example:
        >>> with Heartbeat(storage_of(study), trial_id_of(trial), interval=10.0, grace=40.0):  # doctest: +SKIP
        ...     trainer.fit(model)
    """

    def __init__(self, storage: Any, trial_id: int, interval: float, grace: Optional[float] = None) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self.grace = float(grace) if grace is not None else 4.0 * float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightning_clr-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat(self.storage, self.trial_id)
            except Exception:  # the trial finished meanwhile, or the storage hiccupped: try again later
                pass

    def __enter__(self) -> Heartbeat:
        self.storage.set_trial_system_attr(self.trial_id, INTERVAL_KEY, float(self.interval))
        self.storage.set_trial_system_attr(self.trial_id, GRACE_KEY, self.grace)
        beat(self.storage, self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def fail_stale_trials(study: Any, grace_period: float, recheck: bool = True) -> list[int]:
    """Mark FAIL every RUNNING trial whose worker stopped beating: no heartbeat for longer than the grace
    period that trial's own worker declared (``grace_period``, this worker's, for a trial that declared none).

    A trial without any heartbeat counts from its start time. A stall shared by every worker (a journal lock
    left by a killed process, a paused database, this very process stopped) makes live trials look stale
    too, so a suspect is failed only if its heartbeat has not moved after a second look, taken up to two of
    its worker's intervals later (at most ``RECHECK_CAP`` seconds). Returns the numbers of the trials failed.
    Another worker failing the same trial at the same time is harmless.
    """
    suspects = _stale(study, grace_period)
    if not suspects:
        return []
    if recheck:
        longest = max(interval for _, _, interval, _ in suspects.values())
        time.sleep(min(2.0 * longest + 1.0, RECHECK_CAP))
        again = _stale(study, grace_period)
        suspects = {tid: s for tid, s in suspects.items() if tid in again and again[tid][1] == s[1]}
    failed = []
    for trial_id, (number, _, _, silent) in sorted(suspects.items()):
        try:
            storage_of(study).set_trial_user_attr(
                trial_id, "error", f"{STALE_PREFIX} no heartbeat for {silent:.0f} s (> its worker's grace period);"
                " its worker probably died",
            )
            if storage_of(study).set_trial_state_values(trial_id, TrialState.FAIL):
                failed.append(number)
        except Exception:  # finished or failed by someone else meanwhile
            continue
    return failed


def _stale(study: Any, grace_period: float) -> dict[int, tuple[int, Any, float, float]]:
    """``{trial_id: (number, last heartbeat, its worker's interval, seconds silent)}`` of the RUNNING trials
    silent for longer than their worker's grace period."""
    now = time.time()
    out = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.system_attrs
        last = attrs.get(HEARTBEAT_KEY)
        if last is None:
            last = trial.datetime_start.timestamp() if trial.datetime_start is not None else now
        grace = _declared(attrs.get(GRACE_KEY), grace_period)
        interval = _declared(attrs.get(INTERVAL_KEY), grace / 4.0)
        if now - float(last) > grace:
            out[trial_id_of(trial)] = (trial.number, last, interval, now - float(last))
    return out


def _declared(value: Any, default: float) -> float:
    """A number a worker stored on its trial, or ``default`` when it is missing or unusable."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float(default)
    return out if math.isfinite(out) and out > 0 else float(default)


def void_stale_error(trial: Any, frozen: Any) -> Any:
    """The owner of a still-RUNNING trial clears the ``error`` of another worker's sweep that wrote it but never
    failed the trial (that worker stopped in between): the trial is alive. Returns the trial as stored now."""
    if str(frozen.user_attrs.get("error") or "").startswith(STALE_PREFIX) and not frozen.state.is_finished():
        trial.set_user_attr("error", None)
        return storage_of(trial.study).get_trial(trial_id_of(trial))
    return frozen


def finished_elsewhere(storage: Any, trial_id: int) -> bool:
    """Whether the trial was finished by someone else (another worker's stale-trial sweep) while it ran here."""
    try:
        return storage.get_trial(trial_id).state.is_finished()
    except Exception:  # the storage is down: not known, so not claimed
        return False


BOUND_KEYS = ("clr_base_lr", "clr_max_lr")


def stored_bounds(study: Any) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
    """The LR bounds the study's range test stored (``clr_base_lr``, ``clr_max_lr``: one value per param group,
    or one float from an earlier version), or ``None`` before it ran.

    They are data from a storage that anyone may have written: each must be a learning rate (a finite number in
    ``[MIN_LR, MAX_LR]``), both lists as long, and ``clr_max_lr`` must exceed ``clr_base_lr`` in every group;
    otherwise one :class:`StorageError` line names the attribute and its value, before any trial trains with it.
    """
    attrs = study.user_attrs
    if any(key not in attrs for key in BOUND_KEYS):
        return None  # not (yet) stored: the two attributes are written one after the other
    base, high = (_stored_lrs(study, key, attrs.get(key)) for key in BOUND_KEYS)
    if len(base) != len(high):
        raise _bad_attr(study, BOUND_KEYS[1], attrs[BOUND_KEYS[1]], f"one value per param group ({len(base)})")
    if any(h <= b for b, h in zip(base, high)):
        shown = base[0] if len(base) == 1 else list(base)
        raise _bad_attr(study, BOUND_KEYS[1], attrs[BOUND_KEYS[1]], f"greater than clr_base_lr ({shown!r})")
    return base, high


def _stored_lrs(study: Any, key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list):
        return (_stored_lr(study, key, value),)
    if not value:
        raise _bad_attr(study, key, value, "a learning rate or a non-empty list of them")
    return tuple(_stored_lr(study, key, v) for v in value)


def _stored_lr(study: Any, key: str, value: Any) -> float:
    if isinstance(value, str):  # a JSON string such as "0.01": not a number, whatever it spells
        raise _bad_attr(study, key, value, "a number (not a string)")
    try:
        return learning_rate(key, value)
    except ArgumentError as err:
        raise _bad_attr(study, key, value, err.requirement) from None


def _bad_attr(study: Any, key: str, value: Any, requirement: str) -> StorageError:
    return StorageError(
        f"study {study.study_name!r} in storage {storage_name(storage_of(study))!r}: its user attribute {key!r} must"
        f" be {requirement}, got {short_repr(value)}; fix it (study.set_user_attr) or use a new study_name"
    )
