"""The fit's optimizers as the callback sees them: which ones it drives, which momentum key each param group
cycles, and the removal of schedulers from ``configure_optimizers`` without leaving their traces behind.

Example:
    >>> import torch
    >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    >>> momentum_keys([opt], cycle_momentum=True)
    ['betas']
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer

from lightning_clr._lightning import is_mock_optimizer

__all__ = ["SCHEDULER_GROUP_KEYS", "momentum_keys", "remove_schedulers", "training_optimizers"]

# Keys that torch's schedulers add to param groups: LRScheduler's `initial_lr`, OneCycleLR's `max_lr`, `min_lr`,
# and the momentum bounds of OneCycleLR and CyclicLR.
SCHEDULER_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")


def training_optimizers(trainer: pl.Trainer) -> list[Optimizer]:
    """The fit's optimizers; each param group must have an ``lr``."""
    optimizers = [opt for opt in trainer.optimizers if not is_mock_optimizer(opt)]
    if not optimizers:
        raise ValueError(
            "CyclicLearningRate needs an optimizer, but `configure_optimizers` returned none."
            " Return a torch optimizer from `configure_optimizers`."
        )
    for i, opt in enumerate(optimizers):
        for j, group in enumerate(opt.param_groups):
            if "lr" not in group:
                raise ValueError(
                    f"CyclicLearningRate: param group {j} of optimizer {i} ({type(opt).__name__}) has no 'lr'"
                )
    return optimizers


def momentum_keys(optimizers: list[Optimizer], cycle_momentum: bool) -> list[Optional[str]]:
    """Per param group (flat, across optimizers): ``"betas"``, ``"momentum"`` or ``None`` (not cycled).
    Momentum is cycled only where it is already on (> 0) or betas exist: it is never switched on."""
    keys: list[Optional[str]] = []
    for opt in optimizers:
        for group in opt.param_groups:
            momentum = group.get("momentum")
            if not cycle_momentum:
                keys.append(None)
            elif "betas" in group:
                keys.append("betas")
            elif isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and momentum > 0:
                keys.append("momentum")
            else:
                keys.append(None)
    return keys


def remove_schedulers(trainer: pl.Trainer, optimizers: list[Optimizer]) -> None:
    """Drop the schedulers of ``optimizers`` from the fit (the callback owns their LR), with a warning, and undo
    what they changed in the param groups at construction."""
    configs = trainer.strategy.lr_scheduler_configs
    ours = {id(opt) for opt in optimizers}
    for config in configs:
        scheduler = config.scheduler
        if id(scheduler.optimizer) not in ours:
            continue
        rank_zero_warn(
            f"CyclicLearningRate replaces the {type(scheduler).__name__} scheduler (interval={config.interval!r})"
            f" that `configure_optimizers` returned for {type(scheduler.optimizer).__name__}: the callback now"
            " sets the LR once per optimizer step. Remove the scheduler to silence this warning."
        )
        undo_scheduler(scheduler)
    trainer.strategy.lr_scheduler_configs = [c for c in configs if id(c.scheduler.optimizer) not in ours]


def undo_scheduler(scheduler: Any) -> None:
    """Put back the momentum or betas the optimizer was built with (its ``defaults``), where OneCycleLR or CyclicLR
    rewrote them at construction, and remove the keys schedulers add to param groups.

    A momentum given per param group (in the group's dict rather than to the optimizer) cannot be told apart from
    the scheduler's value once overwritten; it falls back to the optimizer's default too.
    """
    optimizer = scheduler.optimizer
    defaults = getattr(optimizer, "defaults", {})
    rewrote_momentum = bool(getattr(scheduler, "cycle_momentum", False))
    for group in optimizer.param_groups:
        if rewrote_momentum and ("max_momentum" in group or "base_momentum" in group):
            if "betas" in group and "betas" in defaults:
                group["betas"] = tuple(defaults["betas"])
            elif "momentum" in group and "momentum" in defaults:
                group["momentum"] = defaults["momentum"]
        for key in SCHEDULER_GROUP_KEYS:
            group.pop(key, None)
