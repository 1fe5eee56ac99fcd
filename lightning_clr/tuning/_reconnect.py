"""A database storage that waits out an outage instead of killing the worker.

A database restarted for maintenance, a failover, a network cut: for a while every call raises a connection
error, and without this wrapper the worker dies with :class:`~lightning_clr.tuning.StorageError` in the middle of
its trial. :class:`ReconnectingStorage` retries such calls (and only those: a connection that could not be opened
or was cut) for up to ``patience`` seconds, with one warning when the outage starts and one line when it ends.

Retrying a write must not do it twice. Every write of Optuna's storage API is idempotent (attributes, params,
intermediate values: the same value written again) except two, handled here:

- ``create_new_trial``: the new trial carries a token in its system attributes; after a failed call, a trial with
  that token is looked up before a second one is created (the first call may have committed before the
  connection was cut). Optuna's RDBStorage retries a creation on its own too, unseen here, so after every
  creation the study's RUNNING trials are searched for twins with the same token: each is marked FAIL with an
  ``error`` naming the trial it duplicates, and no worker trains it.
- ``set_trial_state_values``: a retried finish that finds the trial already in that state with those values
  counts as done. Taking a WAITING trial (``RUNNING`` from ``WAITING``) is not retried after a cut: if the first
  call did commit, the trial has no owner and the next worker's heartbeat sweep fails it (documented in
  docs/tuning.md).

A storage that never answered is not waited for: a URL with a typo fails at once, as before.

Example:
    >>> storage = ReconnectingStorage(optuna.storages.RDBStorage(url), patience=120.0)  # doctest: +SKIP
    >>> study = optuna.create_study(storage=storage, study_name="clr", load_if_exists=True)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from typing import Any, Callable, Optional, Sequence

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from lightning_clr.tuning._optuna import trial_id_of

__all__ = ["TOKEN_KEY", "TWIN_ERROR", "ReconnectingStorage", "reconnecting", "transient"]

TOKEN_KEY = "lightning_clr:create_token"
TWIN_ERROR = "twin of trial"  # the start of the `error` of a trial created twice by a retried call
# Exception class names (of the root cause, or any of its bases) that mean "no connection": the call did not run,
# or was cut. Every DB-API driver names its connection faults OperationalError or InterfaceError.
_TRANSIENT = {"OperationalError", "InterfaceError", "ConnectionError", "TimeoutError", "AdminShutdown"}
_FIRST_WAIT, _LONGEST_WAIT = 0.25, 5.0


def transient(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) is a lost or refused connection, as opposed to a bad request."""
    seen: list[BaseException] = [err]
    while (seen[-1].__cause__ or seen[-1].__context__) is not None and len(seen) < 20:
        seen.append(seen[-1].__cause__ or seen[-1].__context__)  # type: ignore[arg-type]
    for candidate in seen:
        for link in (candidate, getattr(candidate, "orig", None)):
            if isinstance(link, BaseException) and any(c.__name__ in _TRANSIENT for c in type(link).__mro__):
                return True
    return False


def _cause(err: BaseException) -> str:
    """The driver's own message (SQLAlchemy's and Optuna's wrappers dropped), on one line."""
    seen: BaseException = err
    for _ in range(20):
        orig = getattr(seen, "orig", None)
        if isinstance(orig, BaseException):
            seen = orig
            break
        if (seen.__cause__ or seen.__context__) is None:
            break
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return f"{type(seen).__name__}: {' '.join(str(seen).split())}"[:300]


class ReconnectingStorage(BaseStorage):
    """An Optuna storage (a database's) whose calls wait out a lost connection for up to ``patience`` seconds.

    Args:
        backend: The storage to wrap (an ``optuna.storages.RDBStorage``).
        patience: Seconds a call keeps retrying a lost or refused connection; ``0`` disables it.
        name: How messages name the storage (no password).
        answered: Whether its server has answered already (a built ``RDBStorage`` has: it connected to create its
            tables). Until it answers, a refused connection is a wrong URL, raised at once, not an outage.

    Example:
        >>> storage = ReconnectingStorage(optuna.storages.RDBStorage(url), patience=120.0)  # doctest: +SKIP
    """

    def __init__(
        self, backend: BaseStorage, patience: float = 120.0, name: str = "the study's storage", answered: bool = False
    ) -> None:
        self._backend = backend
        self.patience = float(patience)
        self.name = name
        self._answered = answered  # a storage that never answered is a wrong URL, not an outage
        self._lock = threading.Lock()
        self._down_since: Optional[float] = None

    def __getattr__(self, name: str) -> Any:  # the backend's own extras (url, engine, heartbeat settings)
        if name == "_backend":
            raise AttributeError(name)
        return getattr(self._backend, name)

    def __getstate__(self) -> dict[str, Any]:  # travels to spawned ranks without its lock
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- retrying
    def _call(self, method: str, *args: Any, after_cut: Optional[Callable[[], Any]] = None) -> Any:
        """``backend.method(*args)``, retried while the connection is lost. ``after_cut`` (for writes that are
        not idempotent) runs before each retry that follows a failure and may return the call's result."""
        deadline, wait, failed = None, _FIRST_WAIT, False
        while True:
            try:
                found = after_cut() if failed and after_cut is not None else None  # may meet the outage too
                if found is not None:
                    return self._up(found)
                return self._up(getattr(self._backend, method)(*args))
            except Exception as err:
                if not (self._answered and self.patience > 0 and transient(err)):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.patience
                if now >= deadline:
                    raise
                self._down(err)
                failed = True
                time.sleep(min(wait, max(0.0, deadline - now)))
                wait = min(2 * wait, _LONGEST_WAIT)

    def _up(self, result: Any) -> Any:
        self._answered = True
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            rank_zero_info(f"tune_cycle_length: {self.name} answers again after {time.monotonic() - since:.0f} s.")
        return result

    def _down(self, err: BaseException) -> None:
        with self._lock:
            first, self._down_since = self._down_since is None, self._down_since or time.monotonic()
        if first:
            cause = _cause(err)
            rank_zero_warn(f"tune_cycle_length: {self.name} lost its connection ({cause}); retrying for up to"
                           f" {self.patience:g} s.")

    # ------------------------------------------------------------------ the writes that are not idempotent
    def create_new_trial(self, study_id: int, template_trial: Optional[FrozenTrial] = None) -> int:
        token = uuid.uuid4().hex
        template = template_trial if template_trial is not None else FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
            intermediate_values={}, trial_id=-1,
        )
        template = _with_token(template, token)

        def created() -> Optional[int]:  # the cut call may have committed: that trial, not a second one
            for trial in self._backend.get_all_trials(study_id, deepcopy=False):
                if trial.system_attrs.get(TOKEN_KEY) == token:
                    return trial_id_of(trial)
            return None

        new_id = self._call("create_new_trial", study_id, template, after_cut=created)
        # Optuna's RDBStorage also retries a creation on its own, unseen here: one query for twins, every time
        self._void_twins(study_id, token, new_id)
        return new_id

    def _void_twins(self, study_id: int, token: str, kept: int) -> None:
        """Fail the twins of trial ``kept``: trials created by a retried call whose first try did commit. Each
        gets an ``error`` naming the trial it duplicates, and no worker trains it."""
        for trial in self._call("get_all_trials", study_id, False, (TrialState.RUNNING,)):
            tid = trial_id_of(trial)
            if tid != kept and trial.system_attrs.get(TOKEN_KEY) == token:
                number = self._call("get_trial_number_from_id", kept)
                self._call("set_trial_user_attr", tid, "error", f"{TWIN_ERROR} {number}: a retried creation after a"
                           " lost connection; never trained")
                self._call("set_trial_state_values", tid, TrialState.FAIL, None)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Optional[Sequence[float]] = None
    ) -> bool:
        if state == TrialState.RUNNING:  # taking a WAITING trial: see the module's docstring
            return self._call("set_trial_state_values", trial_id, state, values)

        def done() -> Optional[bool]:  # the cut call may have committed: the trial already ended that way
            trial = self._backend.get_trial(trial_id)
            stored = list(trial.values) if trial.values is not None else None
            same = stored == (list(values) if values is not None else None)
            return True if trial.state == state and same else None

        return self._call("set_trial_state_values", trial_id, state, values, after_cut=done)

    # --------------------------------------------------------------------- everything else: idempotent
    def create_new_study(self, directions: Sequence[Any], study_name: Optional[str] = None) -> int:
        return self._call("create_new_study", directions, study_name)

    def delete_study(self, study_id: int) -> None:
        return self._call("delete_study", study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        return self._call("set_study_user_attr", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        return self._call("set_study_system_attr", study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call("get_study_id_from_name", study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call("get_study_name_from_id", study_id)

    def get_study_directions(self, study_id: int) -> list[Any]:
        return self._call("get_study_directions", study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_user_attrs", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_system_attrs", study_id)

    def get_all_studies(self) -> list[Any]:
        return self._call("get_all_studies")

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        return self._call("set_trial_param", trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        return self._call("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        return self._call("set_trial_user_attr", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        return self._call("set_trial_system_attr", trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call("get_trial", trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Optional[Any] = None) -> list[FrozenTrial]:
        return self._call("get_all_trials", study_id, deepcopy, states)

    def get_n_trials(self, study_id: int, state: Optional[Any] = None) -> int:
        return self._call("get_n_trials", study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call("get_best_trial", study_id)

    def remove_session(self) -> None:
        return self._backend.remove_session()


def _with_token(template: FrozenTrial, token: str) -> FrozenTrial:
    return FrozenTrial(
        number=template.number, state=template.state, value=None, values=template.values,
        datetime_start=template.datetime_start, datetime_complete=template.datetime_complete,
        params=template.params, distributions=template.distributions, user_attrs=template.user_attrs,
        system_attrs={**template.system_attrs, TOKEN_KEY: token}, intermediate_values=template.intermediate_values,
        trial_id=-1,
    )


def reconnecting(backend: Any, patience: float, name: str) -> Any:
    """``backend``, just built (so its server answered: Optuna's RDBStorage connects to create its tables), wrapped
    in a :class:`ReconnectingStorage`; as it is when ``patience`` is 0."""
    return ReconnectingStorage(backend, patience, name, answered=True) if patience > 0 else backend


