"""One range test per study, whoever starts first: the LR bounds that every trial and every worker shares.

Workers that start together each see a study without bounds. The one range test is therefore **claimed**
through the storage, with the one atomic create that every Optuna storage has: creating a study whose name
is taken fails (a unique constraint in a database, the log's order in a journal file). The worker that
creates the claim study ``lightning_clr:range_test:<study name>`` runs the range test, stores the bounds in
the study's ``user_attrs`` (one value per param group: ``clr_base_lr``, ``clr_max_lr``) and deletes the claim.
The others wait for the bounds (at most :data:`WAIT_S` seconds, with a message), then reuse them. A claim
whose bounds never come (its worker died) is taken over after the wait, with a warning.

Only imported once optuna is known to be installed.

Example:
    >>> bounds, claimed = shared_bounds(study, "tune_cycle_length")  # doctest: +SKIP
    >>> if bounds is None:  # this worker runs the study's range test, stores it, then releases the claim
    ...     store_bounds(study, base, high); release(study) if claimed else None  # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Optional

import optuna
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_clr.range_test._rules import DEFAULT_BASE_DIVISOR
from lightning_clr.tuning._optuna import storage_of
from lightning_clr.tuning._storage import stored_bounds

__all__ = ["KEYS", "WAIT_S", "claim", "combine", "release", "shared_bounds", "store_bounds"]

KEYS = ("clr_base_lr", "clr_max_lr")
WAIT_S = 900.0  # how long a worker waits for the bounds of a range test that another worker claimed
_POLL_S = 1.0

Bounds = tuple[tuple[float, ...], tuple[float, ...]]


def _claim_name(study: Any) -> str:
    return f"lightning_clr:range_test:{study.study_name}"


def combine(stored: Bounds, base: Optional[tuple[float, ...]], high: Optional[tuple[float, ...]],
            who: str = "tune_cycle_length") -> Bounds:
    """The given bounds where given, the study's for the others, per param group, with ``max_lr > base_lr``
    (a study's bound on the wrong side of a given one is replaced by the range test's default ratio, with a
    warning naming both, as the callback does when its own range test lands there)."""
    given_base = base is not None
    base, high = base or stored[0], high or stored[1]
    if len(base) != len(high) and 1 not in (len(base), len(high)):
        raise RuntimeError(f"the study's bounds {list(stored[0])}, {list(stored[1])} are for another number of"
                           f" param groups than the given {list(base)}, {list(high)}")
    n = max(len(base), len(high))
    base, high = base * (n // len(base)), high * (n // len(high))
    wrong = [k for k in range(n) if high[k] <= base[k]]
    if given_base:
        kept = tuple(h if h > b else b * DEFAULT_BASE_DIVISOR for b, h in zip(base, high))
        _warn_replaced(who, wrong, ("max_lr", high), ("base_lr", base), kept, f"{DEFAULT_BASE_DIVISOR:g} x base_lr")
        return base, kept
    kept = tuple(b if h > b else h / DEFAULT_BASE_DIVISOR for b, h in zip(base, high))
    _warn_replaced(who, wrong, ("base_lr", base), ("max_lr", high), kept, f"max_lr / {DEFAULT_BASE_DIVISOR:g}")
    return kept, high


def _warn_replaced(who: str, groups: list[int], stored: tuple[str, tuple[float, ...]],
                   given: tuple[str, tuple[float, ...]], kept: tuple[float, ...], rule: str) -> None:
    (key, stored_lrs), (given_key, given_lrs) = stored, given
    if groups:
        rank_zero_warn(
            f"{who}: the study's {key} {[stored_lrs[k] for k in groups]} is on the wrong side of the given"
            f" {given_key} {[given_lrs[k] for k in groups]} (param group(s) {groups}); using {key} = {rule}:"
            f" {[kept[k] for k in groups]}."
        )


def store_bounds(study: Any, base: tuple[float, ...], high: tuple[float, ...], result: Any = None) -> None:
    """Store the bounds (and the range test's reading, without its curve) in the study's ``user_attrs``."""
    study.set_user_attr(KEYS[0], [float(b) for b in base])
    study.set_user_attr(KEYS[1], [float(h) for h in high])
    if result is not None and hasattr(result, "to_dict"):
        try:
            study.set_user_attr("clr_range_test", {k: v for k, v in result.to_dict().items() if k != "lrs"})
        except Exception:  # not JSON-serializable: the bounds are what matters
            pass


def claim(study: Any) -> bool:
    """Claim the study's range test; ``True`` for exactly one of the workers that try at once."""
    storage = storage_of(study)
    try:
        claim_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], _claim_name(study))
    except optuna.exceptions.DuplicatedStudyError:
        return False
    try:
        storage.set_study_user_attr(claim_id, "owner", f"{socket.gethostname()}:{os.getpid()}")
    except Exception:  # the owner is for messages only
        pass
    return True


def release(study: Any) -> None:
    """Delete the claim (after the bounds are stored, or when this worker's range test failed)."""
    storage = storage_of(study)
    try:
        storage.delete_study(storage.get_study_id_from_name(_claim_name(study)))
    except KeyError:  # released already
        pass


def _owner(study: Any) -> str:
    storage = storage_of(study)
    try:
        return str(storage.get_study_user_attrs(storage.get_study_id_from_name(_claim_name(study))).get("owner"))
    except KeyError:
        return "another worker"


def shared_bounds(study: Any, who: str) -> tuple[Optional[Bounds], bool]:
    """``(bounds, claimed)``: the study's stored bounds, waiting for them while another worker's range test runs;
    ``(None, True)`` when this worker holds the claim and must run the range test (then store and release).
    ``(None, False)`` only after a second wait without bounds: run the test without a claim."""
    for _ in range(2):
        found = stored_bounds(study)
        if found is not None:
            return found, False
        if claim(study):
            found = stored_bounds(study)  # stored between the read and the claim: nothing to run
            if found is not None:
                release(study)
                return found, False
            return None, True
        owner = _owner(study)
        rank_zero_info(f"{who}: worker {owner} runs the study's range test; waiting for its bounds (at most"
                       f" {WAIT_S:g} s).")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
            found = stored_bounds(study)
            if found is not None:
                return found, False
        rank_zero_warn(f"{who}: no bounds after {WAIT_S:g} s from the range test that worker {owner} claimed (did"
                       " it die?); taking it over.")
        release(study)
    return None, False
