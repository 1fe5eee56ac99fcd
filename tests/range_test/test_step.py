"""One sweep step with a real Trainer: AMP, accumulation and clipping apply; manual optimization; a
`training_step` returning None skips that batch; a missing loss is refused."""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyModel, loader, trainer
from lightning.pytorch.plugins import MixedPrecision
from range_test_helpers import Probe, assert_same, cfg
from torch import nn


# ---------------------------------------------------------------- the fit's machinery applies
class CountingModel(TinyModel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = self.clips = self.opt_steps = 0
        self.autocast: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return super().training_step(batch, batch_idx)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        self.clips += 1
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.opt_steps += 1


def test_accumulation_clipping_and_grad_scaler_apply_and_are_restored() -> None:
    model = CountingModel(lr=0.01)
    probe = Probe(cfg(num_steps=10))
    tr = trainer(
        callbacks=[probe], max_steps=1, accumulate_grad_batches=2, gradient_clip_val=0.5,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))],
    )
    model.steps = model.clips = 0
    tr.fit(model, loader())
    # sweep: 10 optimizer steps of 2 batches each; then 1 real optimizer step of 2 batches
    assert model.steps == 20 + 2 and model.opt_steps == 10 + 1 and model.clips == 10 + 1
    assert all(model.autocast)
    assert probe.result is not None and len(probe.result.lrs) == 10
    assert_same(probe.before, probe.after)  # includes the GradScaler (lazily created: back to None)


# ---------------------------------------------------------------- manual optimization
class ManualModel(TinyModel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.seen_lrs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss)
        self.seen_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        self.log("train_loss", loss)
        return loss


def test_manual_optimization_each_training_step_is_one_sweep_step() -> None:
    model = ManualModel(optimizer="adam", lr=0.01)
    probe = Probe(cfg(num_steps=12, max_lr=0.1))
    tr = trainer(callbacks=[probe], max_epochs=1)
    tr.fit(model, loader())
    r = probe.result
    assert r is not None and len(r.lrs) == 12
    assert model.seen_lrs[:12] == r.lrs  # the user's own opt.step() used the sweep's LR
    assert model.seen_lrs[12:] == [0.01] * 8
    assert_same(probe.before, probe.after)
    assert tr.global_step == 8  # the sweep's steps were not counted


# ---------------------------------------------------------------- training_step returning None
def in_sweep(model: pl.LightningModule) -> bool:
    return model.trainer.fit_loop.epoch_loop.batch_progress.total.ready == 0  # before any real batch


class SkippingModel(CountingModel):
    """Returns None (Lightning's "skip this batch") for every third ``training_step`` call of the sweep."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep_calls = self.backwards = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        if in_sweep(self):
            self.sweep_calls += 1
            if self.sweep_calls % 3 == 0:
                return None
        return loss

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.backwards += 1


def test_none_from_training_step_skips_that_batch_warns_once_and_is_counted() -> None:
    model = SkippingModel(lr=0.01)
    probe = Probe(cfg(num_steps=10))
    tr = trainer(callbacks=[probe], max_steps=1, accumulate_grad_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(model, loader(n=256, batch_size=8))
    r = probe.result
    assert probe.error is None and r is not None and len(r.lrs) == 10 and not r.stopped_early
    # 10 sweep steps x 2 accumulated batches = 20 batches that ran; every third call skipped: 29 calls, 9 skipped
    assert model.sweep_calls == 29 and r.skipped_batches == 9
    assert model.backwards == 20 + 2 and model.opt_steps == 10 + 1  # no backward, no optimizer step for a skip
    assert all(math.isfinite(v) for v in r.losses)
    assert sum("returned None" in str(w.message) for w in caught) == 1
    assert_same(probe.before, probe.after)


class NoLoss(TinyModel):
    def __init__(self, returns: Any, manual: bool = False) -> None:
        super().__init__()
        self.returns = returns
        self.automatic_optimization = not manual

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(nn.functional.mse_loss(self(batch[0]), batch[1]))
            opt.step()
            return self.returns if in_sweep(self) else None
        loss = super().training_step(batch, batch_idx)
        return self.returns if in_sweep(self) else loss


@pytest.mark.parametrize(
    "returns, manual, match",
    [
        (None, False, "got None from `training_step` for 21 batches in a row (sweep step 0), more than the sweep's 20"),
        ({"out": 1}, False, "without a scalar 'loss'"),
        (None, True, "returned None at sweep step 0. In manual optimization the sweep cannot skip a batch"),
    ],
)
def test_training_step_without_loss_is_refused_and_state_restored(returns: Any, manual: bool, match: str) -> None:
    probe = Probe(cfg())
    trainer(callbacks=[probe], max_steps=1).fit(NoLoss(returns, manual), loader())
    assert isinstance(probe.error, ValueError) and match in str(probe.error)
    assert_same(probe.before, probe.after)
