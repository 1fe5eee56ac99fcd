"""The fit's optimizers as the callback sees them: which ones it drives, which momentum it may cycle, and the
schedulers it takes over, undoing what they changed at construction."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import TinyModel, loader, trainer
from lightning.pytorch import Callback

from lightning_clr.engine._optimizers import (
    SCHEDULER_GROUP_KEYS,
    momentum_keys,
    remove_schedulers,
    training_optimizers,
    undo_scheduler,
)


def _params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(2, 1).parameters())


def test_momentum_is_cycled_only_where_it_is_already_on() -> None:
    adam = torch.optim.Adam(_params(), lr=0.1)
    sgd_on = torch.optim.SGD(_params(), lr=0.1, momentum=0.9)
    sgd_off = torch.optim.SGD(_params(), lr=0.1)
    adagrad = torch.optim.Adagrad(_params(), lr=0.1)
    assert momentum_keys([adam, sgd_on, sgd_off, adagrad], True) == ["betas", "momentum", None, None]
    assert momentum_keys([adam, sgd_on], False) == [None, None]


def test_undo_scheduler_puts_back_the_optimizers_momentum_and_removes_the_schedulers_keys() -> None:
    sgd = torch.optim.SGD(_params(), lr=0.1, momentum=0.5)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=1.0, total_steps=10)  # momentum -> 0.95
    assert sgd.param_groups[0]["momentum"] != 0.5 and "initial_lr" in sgd.param_groups[0]
    undo_scheduler(one_cycle)
    assert sgd.param_groups[0]["momentum"] == 0.5
    assert not set(SCHEDULER_GROUP_KEYS) & set(sgd.param_groups[0])
    adam = torch.optim.Adam(_params(), lr=0.1, betas=(0.7, 0.99))
    undo_scheduler(torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=1.0, total_steps=10))
    assert adam.param_groups[0]["betas"] == (0.7, 0.99)


class _Take(Callback):
    """In a real fit: the optimizers the callback would drive, and the schedulers it takes over."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.optimizers = training_optimizers(trainer)
        with pytest.warns(UserWarning, match="replaces the StepLR scheduler"):
            remove_schedulers(trainer, self.optimizers)
        self.configs = list(trainer.strategy.lr_scheduler_configs)
        self.group = dict(self.optimizers[0].param_groups[0])


class _WithScheduler(TinyModel):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1)]


def test_remove_schedulers_drops_the_fits_scheduler_of_our_optimizer() -> None:
    take = _Take()
    trainer(callbacks=[take], limit_train_batches=1).fit(_WithScheduler(), loader())
    assert len(take.optimizers) == 1 and take.configs == []
    assert "initial_lr" not in take.group


def test_an_optimizer_without_lr_and_a_model_without_optimizer_are_refused() -> None:
    class NoOptimizer(TinyModel):
        def configure_optimizers(self) -> Any:
            return None

    class Check(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            training_optimizers(trainer)

    with pytest.raises(ValueError, match="needs an optimizer"), pytest.warns(UserWarning):
        trainer(callbacks=[Check()], limit_train_batches=1).fit(NoOptimizer(), loader())

    class NoLr(TinyModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            del opt.param_groups[0]["lr"]
            return opt

    with pytest.raises(ValueError, match="has no 'lr'"):
        trainer(callbacks=[Check()], limit_train_batches=1).fit(NoLr(), loader())
