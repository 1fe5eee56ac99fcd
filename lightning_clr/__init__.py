"""lightning_clr: cyclical learning rates for PyTorch Lightning, with an automatic LR range test
and Optuna tuning of the cycle length.

Example:
    >>> import lightning_clr
    >>> callback = lightning_clr.CyclicLearningRate()  # bounds from the range test at fit start
"""

from __future__ import annotations

from typing import Any

from lightning_clr.callback import CyclicLearningRate
from lightning_clr.range_test import RangeTestConfig, RangeTestResult, lr_range_test
from lightning_clr.schedule import cyclic_lr, cyclic_momentum

__version__ = "0.1.0"

__all__ = [
    "CyclePruningCallback",
    "CycleTuningResult",
    "CyclicLearningRate",
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

# Names whose modules import optional extras (optuna, matplotlib): imported on first use.
_LAZY: dict[str, str] = {
    "CyclePruningCallback": "lightning_clr.tuning",
    "CycleTuningResult": "lightning_clr.tuning",
    "suggest_cycle": "lightning_clr.tuning",
    "tune_cycle_length": "lightning_clr.tuning",
    "LightningCLRCLI": "lightning_clr.cli",  # needs jsonargparse (lightning-clr[cli])
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lightning_clr' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
