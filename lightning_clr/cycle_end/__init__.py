"""Callbacks that act only at the cycle ends of :class:`~lightning_clr.CyclicLearningRate`, where the LR is
back at ``base_lr`` and a cyclical run's model is at its best.

- :class:`CycleEndCheckpoint`: a checkpoint at every cycle end, the best ``save_top_k`` kept by a metric;
- :class:`CycleEndEarlyStopping`: early stopping that judges only at cycle ends (``patience`` in cycles).

Both need a ``CyclicLearningRate`` among the Trainer's callbacks and judge at the same moments: the first
validation at or after each cycle end (see docs/cycle_end.md).

Example:
    >>> from lightning_clr import CycleEndCheckpoint, CycleEndEarlyStopping, CyclicLearningRate
    >>> callbacks = [CyclicLearningRate(), CycleEndCheckpoint(monitor="val_loss", save_top_k=1),
    ...              CycleEndEarlyStopping(monitor="val_loss", patience=2)]
"""

from __future__ import annotations

from lightning_clr.cycle_end._checkpoint import CycleEndCheckpoint
from lightning_clr.cycle_end._early_stopping import CycleEndEarlyStopping

__all__ = ["CycleEndCheckpoint", "CycleEndEarlyStopping"]
