"""The one place the tuner reaches Optuna itself: its lazy import, and the two private members it needs.

Optuna has no public handle on a study's storage or on a trial's storage id, and the ask-and-tell tuner (rank 0
alone talks to Optuna; a heartbeat thread and other workers' sweeps write to the same trial) needs both. Each is
behind a function raising :class:`~lightning_clr._lightning.PrivateMemberError` by name when an installed Optuna
lacks it; ``tests/tuning/test_optuna_seam.py`` calls them all (also in the floors job).

Example:
    >>> optuna = import_optuna()
    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> storage_of(study).get_trial(trial_id_of(trial)).number
    0
"""

from __future__ import annotations

from typing import Any

from lightning_clr._lightning import _attr

__all__ = ["import_optuna", "storage_of", "trial_id_of"]


def import_optuna() -> Any:
    """The ``optuna`` module, or an ImportError saying which extra installs it."""
    try:
        import optuna
    except ImportError as err:
        raise ImportError(
            "tuning the cycle length needs optuna, an optional dependency: `pip install lightning-clr[tune]`"
        ) from err
    return optuna


def storage_of(study: Any) -> Any:
    """The storage object of an ``optuna.Study`` (``study._storage``)."""
    return _attr(study, "_storage", "optuna.Study")


def trial_id_of(trial: Any) -> int:
    """The storage's id of an ``optuna.Trial`` or ``FrozenTrial`` (``trial._trial_id``), not its number."""
    return _attr(trial, "_trial_id", f"optuna.{type(trial).__name__}")
