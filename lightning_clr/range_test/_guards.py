"""What the range test refuses, checked before any sweep step: sharded strategies, several optimizers, no running
fit, ``training_step(dataloader_iter)``, and param groups whose configured LR cannot be scaled.

``refuse_sharded`` is public (``from lightning_clr.range_test import refuse_sharded``): the callback calls it in
``setup``, before the model is sharded.

Example:
    >>> from lightning.pytorch.strategies import SingleDeviceStrategy
    >>> refuse_sharded(SingleDeviceStrategy())  # not sharded: returns None
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

from lightning_clr._lightning import combined_loader, is_mock_optimizer
from lightning_clr._validation import ArgumentError, number

__all__ = ["SHARDED_STRATEGIES", "check_supported", "configured_lrs", "refuse_sharded"]

SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def refuse_sharded(strategy: Any) -> None:
    """Raise ``ValueError`` for FSDP, DeepSpeed and other sharded strategies (or a subclass), naming the strategy.

    The range test's in-memory snapshot needs the full parameters on every rank.

    Example:
        >>> from lightning.pytorch.strategies import FSDPStrategy
        >>> refuse_sharded(FSDPStrategy())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The LR range test cannot run under the sharded strategy FSDPStrategy: ...
    """
    cls = type(strategy)
    sharded = [c.__name__ for c in cls.__mro__ if c.__name__ in SHARDED_STRATEGIES]
    if sharded:
        kind = cls.__name__ if cls.__name__ == sharded[0] else f"{cls.__name__} (a {sharded[0]})"
        raise ValueError(
            f"The LR range test cannot run under the sharded strategy {kind}: its in-memory snapshot needs the"
            " full parameters on every rank. Give both `base_lr` and `max_lr` explicitly (for example found"
            " once with strategy='ddp')."
        )


def check_supported(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """Refuse what the range test cannot do, before any step. Returns the single optimizer."""
    refuse_sharded(trainer.strategy)
    optimizers = [opt for opt in trainer.optimizers if not is_mock_optimizer(opt)]
    if len(optimizers) != 1:
        raise ValueError(
            f"The LR range test needs exactly one optimizer, found {len(optimizers)}"
            " (configure_optimizers): give `base_lr` and `max_lr` explicitly."
        )
    if combined_loader(trainer) is None:
        raise ValueError(
            "The LR range test needs the train dataloader of a running fit: call it from `on_train_start`"
            " of `trainer.fit` (or use `lightning_clr.lr_range_test`)."
        )
    if is_param_in_hook_signature(pl_module.training_step, "dataloader_iter", explicit=True):
        raise ValueError(
            "The LR range test does not support a `training_step(dataloader_iter)`: give `base_lr` and `max_lr`."
        )
    return optimizers[0]


def configured_lrs(optimizer: Any) -> list[float]:
    """The configured LR of each param group, each a finite number > 0 (the sweep scales them by one factor).

    Raises an :class:`~lightning_clr._validation.ArgumentError` (a ``ValueError``) naming the group's index.
    """
    out = []
    for i, group in enumerate(optimizer.param_groups):
        name = f"{type(optimizer).__name__}.param_groups[{i}]['lr']"
        value = group.get("lr")
        requirement = "a finite number > 0 for the LR range test"
        detail = (
            "the sweep multiplies every group's configured LR by one factor, keeping their ratios; give each"
            " param group a positive LR, or give `base_lr` and `max_lr` explicitly"
        )
        try:
            lr = number(name, value, requirement)
        except ArgumentError:
            raise ArgumentError(name, value, requirement, detail) from None
        if not math.isfinite(lr) or lr <= 0:
            raise ArgumentError(name, value, requirement, detail)
        out.append(lr)
    return out
