"""The one warning for Lightning's ``EarlyStopping`` next to a ``CyclicLearningRate``."""

from __future__ import annotations

import sys

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_clr.cycle_end._early_stopping import CycleEndEarlyStopping

__all__ = ["warn_epoch_early_stopping"]


def warn_epoch_early_stopping(trainer: pl.Trainer) -> bool:
    """Warn once (per fit) if the Trainer has an ``EarlyStopping`` that judges every validation; ``True`` if
    it warned. Lightning's ``EarlyStopping`` compares the metric mid-cycle too, where it rises with the LR.

    Example:
        >>> import lightning.pytorch as pl
        >>> warn_epoch_early_stopping(pl.Trainer(logger=False, enable_checkpointing=False))
        False
    """
    classes: list[type] = [pl.callbacks.EarlyStopping]
    standalone = sys.modules.get("pytorch_lightning.callbacks")
    if standalone is not None:
        classes.append(standalone.EarlyStopping)
    plain = [cb for cb in trainer.callbacks if isinstance(cb, tuple(classes))
             and not isinstance(cb, CycleEndEarlyStopping)]
    if not plain:
        return False
    first = plain[0]
    rank_zero_warn(
        f"CyclicLearningRate: {type(first).__name__}(monitor={first.monitor!r}, patience={first.patience}) judges"
        " every validation, but in the middle of a cycle the loss rises with the LR, so it stops cyclical runs in a"
        " rising half, far from the cycle end where the model is best. Use lightning_clr.CycleEndEarlyStopping"
        " (patience in cycles), which judges only at cycle ends."
    )
    return True
