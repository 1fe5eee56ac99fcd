"""lightning_clr: cyclical learning rates for PyTorch Lightning, with an automatic LR range test
and Optuna tuning of the cycle length.

Every public name is imported on first use (PEP 562), so ``import lightning_clr.schedule`` stays free of
torch and Lightning, and names that need an optional extra (optuna, jsonargparse) say which extra to install
only when they are used.

Example:
    >>> import lightning_clr
    >>> callback = lightning_clr.CyclicLearningRate()  # bounds from the range test at fit start
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY: dict[str, str] = {
    "ArgumentError": "lightning_clr._validation",
    "CyclePlan": "lightning_clr.engine._plan",
    "CycleSettings": "lightning_clr.engine._settings",
    "CyclicLearningRate": "lightning_clr.callback",
    "CycleEndCheckpoint": "lightning_clr.cycle_end",
    "CycleEndEarlyStopping": "lightning_clr.cycle_end",
    "DivergenceError": "lightning_clr.engine._guard",
    "DivergenceGuard": "lightning_clr.engine._divergence",
    "CyclicSchedule": "lightning_clr.schedule",
    "cyclic_lr": "lightning_clr.schedule",
    "cyclic_momentum": "lightning_clr.schedule",
    "RangeTestConfig": "lightning_clr.range_test",
    "RangeTestResult": "lightning_clr.range_test",
    "lr_range_test": "lightning_clr.range_test",
    "CyclePruningCallback": "lightning_clr.tuning",  # needs optuna (lightning-clr[tune]) when used
    "CycleTuningResult": "lightning_clr.tuning",
    "suggest_cycle": "lightning_clr.tuning",
    "tune_cycle_length": "lightning_clr.tuning",
    "LightningCLRCLI": "lightning_clr.cli",  # needs jsonargparse (lightning-clr[cli])
}

__all__ = [
    "ArgumentError",
    "CycleEndCheckpoint",
    "CycleEndEarlyStopping",
    "CyclePlan",
    "CyclePruningCallback",
    "CycleSettings",
    "CycleTuningResult",
    "CyclicLearningRate",
    "CyclicSchedule",
    "DivergenceError",
    "DivergenceGuard",
    "LightningCLRCLI",
    "RangeTestConfig",
    "RangeTestResult",
    "__version__",
    "cyclic_lr",
    "cyclic_momentum",
    "lr_range_test",
    "suggest_cycle",
    "tune_cycle_length",
]

if TYPE_CHECKING:  # pragma: no cover
    from lightning_clr._validation import ArgumentError
    from lightning_clr.callback import CyclicLearningRate
    from lightning_clr.cli import LightningCLRCLI
    from lightning_clr.cycle_end import CycleEndCheckpoint, CycleEndEarlyStopping
    from lightning_clr.engine._divergence import DivergenceGuard
    from lightning_clr.engine._guard import DivergenceError
    from lightning_clr.engine._plan import CyclePlan
    from lightning_clr.engine._settings import CycleSettings
    from lightning_clr.range_test import RangeTestConfig, RangeTestResult, lr_range_test
    from lightning_clr.schedule import CyclicSchedule, cyclic_lr, cyclic_momentum
    from lightning_clr.tuning import CyclePruningCallback, CycleTuningResult, suggest_cycle, tune_cycle_length


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lightning_clr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
