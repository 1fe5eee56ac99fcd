"""Optuna storages for :func:`lightning_clr.tune_cycle_length`: choosing one from a string, a trial
heartbeat that works for every persistent storage, and the sweep that fails trials of dead workers.

Optuna's own heartbeat exists only for RDB storages and only inside ``study.optimize``; the tuner uses
ask-and-tell (rank 0 alone talks to Optuna), so it keeps its own heartbeat in a trial system attribute.
Only imported once optuna is known to be installed.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

HEARTBEAT_KEY = "lightning_clr:heartbeat"


def make_storage(spec: Optional[str]) -> Any:
    """``None`` → in memory; a string with ``://`` → an RDB URL; any other string → a journal file path."""
    if spec is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"`storage` must be None, a journal file path or a database URL, got {spec!r}")
    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(spec))


def beat(storage: Any, trial_id: int) -> None:
    storage.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())


class Heartbeat:
    """A daemon thread that records ``time.time()`` on a trial every ``interval`` seconds.

    Example:
        >>> with Heartbeat(study._storage, trial._trial_id, interval=10.0):  # doctest: +SKIP
        ...     trainer.fit(model)
    """

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightning_clr-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat(self.storage, self.trial_id)
            except Exception:  # the trial finished meanwhile, or the storage hiccupped: try again later
                pass

    def __enter__(self) -> Heartbeat:
        beat(self.storage, self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def fail_stale_trials(study: Any, grace_period: float) -> list[int]:
    """Mark FAIL every RUNNING trial whose last heartbeat is older than ``grace_period`` seconds.

    A trial without any heartbeat counts from its start time. Returns the numbers of the trials failed.
    Another worker failing the same trial at the same time is harmless.
    """
    now = time.time()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.system_attrs.get(HEARTBEAT_KEY)
        if last is None:
            last = trial.datetime_start.timestamp() if trial.datetime_start is not None else now
        if now - float(last) <= grace_period:
            continue
        try:
            study._storage.set_trial_user_attr(
                trial._trial_id,
                "error",
                f"stale: no heartbeat for {now - float(last):.0f} s (> grace_period {grace_period:g} s);"
                " its worker probably died",
            )
            if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                failed.append(trial.number)
        except Exception:  # finished or failed by someone else meanwhile
            continue
    return failed
