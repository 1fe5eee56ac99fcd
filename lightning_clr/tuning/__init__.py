"""Optuna tuning of the CLR cycle length.

Two ways in:

- your own Optuna objective: :func:`suggest_cycle` gives the trial's :class:`~lightning_clr.CyclicLearningRate`,
  :class:`CyclePruningCallback` reports at cycle ends only and prunes there (DDP-safe);
- :func:`tune_cycle_length`: the whole study for a LightningModule, configured by :class:`SearchSpace`,
  :class:`StudyConfig` and :class:`OutputConfig`, returning a :class:`CycleTuningResult`.

The cycle-end pruners :class:`CycleHalvingPruner` and :class:`CycleEndMedianPruner` work with both. Importing
this package does not import optuna; using its functions needs ``pip install lightning-clr[tune]``.

Example:
    >>> from lightning_clr.tuning import SearchSpace, StudyConfig
    >>> SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=6).half_cycle_step
    1
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_clr.tuning._config import OutputConfig, SearchSpace, StudyConfig
from lightning_clr.tuning._pruning_callback import CyclePruningCallback, suggest_cycle
from lightning_clr.tuning._result import CycleTuningResult
from lightning_clr.tuning._tuner import tune_cycle_length

__all__ = [
    "CycleEndMedianPruner",
    "CycleHalvingPruner",
    "CyclePruningCallback",
    "CycleTuningResult",
    "OutputConfig",
    "SearchSpace",
    "StorageError",
    "StudyConfig",
    "suggest_cycle",
    "tune_cycle_length",
]

_NEED_OPTUNA = {
    "CycleEndMedianPruner": "lightning_clr.tuning._pruners",
    "CycleHalvingPruner": "lightning_clr.tuning._pruners",
    "StorageError": "lightning_clr.tuning._storage",
}


def __getattr__(name: str) -> Any:
    module_name = _NEED_OPTUNA.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lightning_clr.tuning' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"lightning_clr.tuning.{name} needs optuna: `pip install lightning-clr[tune]`") from err
    return getattr(module, name)
