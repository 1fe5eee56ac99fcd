"""The standalone ``pytorch_lightning`` package: the same fits with ``import pytorch_lightning as pl`` models and
Trainers as with ``lightning.pytorch`` ones must step the same LRs and end with bitwise the same weights."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from helpers import regression_data
from packaging.version import Version
from torch import nn
from torch.utils.data import DataLoader

from lightning_clr import CyclicLearningRate, RangeTestConfig, lr_range_test

pytorch_lightning = pytest.importorskip("pytorch_lightning", reason="the standalone pytorch_lightning is not installed")
PACKAGES = ["lightning.pytorch", "pytorch_lightning"]
# pytorch_lightning < 2.6 validates the Trainer's callbacks with `is_overridden(..., parent=its own Callback)`, which
# raises "ValueError: Expected a parent" for a lightning.pytorch.Callback: CyclicLearningRate must be a Callback of
# both packages (lightning_clr._compat.callback_bases()). Newer releases accept it by luck of a looser check.
refused_by_old_pytorch_lightning = pytest.mark.xfail(
    not issubclass(CyclicLearningRate, pytorch_lightning.Callback)
    and Version(pytorch_lightning.__version__) < Version("2.6"),
    raises=ValueError, strict=True,
    reason="pytorch_lightning<2.6 refuses CyclicLearningRate until callback.py uses _compat.callback_bases()",
)


def model_class(package: str) -> Any:
    """A tiny regressor on ``package``'s LightningModule that records each step's LR and momentum."""
    pl = importlib.import_module(package)

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
            self.lrs: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            self.lrs.append(optimizer.param_groups[0]["lr"])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    return Model


def manual_model_class(package: str) -> Any:
    """The same regressor with manual optimization: its own ``opt.step()`` drives Lightning's step counter."""
    base = model_class(package)

    class Manual(base):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            opt = self.optimizers()
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            return loss

    return Manual


def trainer(package: str, tmp_path: Any, **kwargs: Any) -> Any:
    pl = importlib.import_module(package)
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=3, default_root_dir=str(tmp_path / package),
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def data() -> DataLoader:
    return DataLoader(regression_data(48), batch_size=8)


def fit(package: str, tmp_path: Any, callback: CyclicLearningRate, **kwargs: Any) -> tuple[Any, Any]:
    model = model_class(package)()
    tr = trainer(package, tmp_path, callbacks=[callback], **kwargs)
    tr.fit(model, data())
    return model, tr


def weights(model: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@refused_by_old_pytorch_lightning
def test_explicit_bounds_step_the_same_lrs_under_both_packages(tmp_path: Any) -> None:
    runs = {p: fit(p, tmp_path, CyclicLearningRate(base_lr=1e-3, max_lr=1e-2, step_size_up=4)) for p in PACKAGES}
    (model_a, tr_a), (model_b, tr_b) = runs.values()
    assert tr_b.global_step == tr_a.global_step == 18
    assert model_b.lrs == model_a.lrs and len(set(model_a.lrs)) > 2
    assert all(torch.equal(a, b) for a, b in zip(weights(model_a), weights(model_b)))


@refused_by_old_pytorch_lightning
def test_range_test_in_the_callback_gives_the_same_bounds_and_restores_the_loop(tmp_path: Any) -> None:
    config = RangeTestConfig(num_steps=20, min_lr=1e-5, max_lr=1.0)
    callbacks = {p: CyclicLearningRate(range_test=config) for p in PACKAGES}
    runs = {p: fit(p, tmp_path, callbacks[p]) for p in PACKAGES}
    (model_a, tr_a), (model_b, tr_b) = runs.values()
    a, b = callbacks.values()
    assert (b.base_lr, b.max_lr, b.step_size_up) == (a.base_lr, a.max_lr, a.step_size_up)
    # The sweep's steps are undone: the fit's counters and its LR sequence are those of the real steps alone.
    assert tr_b.global_step == tr_a.global_step == 18
    assert tr_b.fit_loop.epoch_loop.batch_progress.total.completed == 18
    assert model_b.lrs == model_a.lrs and len(model_a.lrs) == 20 + 18  # the sweep's steps, then the fit's
    assert all(torch.equal(x, y) for x, y in zip(weights(model_a), weights(model_b)))


def test_standalone_lr_range_test_under_both_packages(tmp_path: Any) -> None:
    config = RangeTestConfig(num_steps=20, min_lr=1e-5, max_lr=1.0)
    results = {}
    for package in PACKAGES:
        model = model_class(package)()
        before = weights(model)
        tr = trainer(package, tmp_path)
        results[package] = lr_range_test(tr, model, train_dataloaders=data(), config=config)
        assert all(torch.equal(x, y) for x, y in zip(before, weights(model)))
        assert tr.global_step == 0
    a, b = results.values()
    assert (b.base_lr, b.max_lr) == (a.base_lr, a.max_lr)
    assert b.lrs == a.lrs and b.losses == a.losses


@refused_by_old_pytorch_lightning
def test_resume_from_a_checkpoint_under_pytorch_lightning(tmp_path: Any) -> None:
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint

    class Preempted(Callback):  # stops after the first epoch: same settings and run length as the full fit
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            trainer.should_stop = True

    clr = dict(base_lr=1e-3, max_lr=1e-2, step_size_up=4)
    full, _ = fit("pytorch_lightning", tmp_path / "full", CyclicLearningRate(**clr))
    ckpt_dir = tmp_path / "ckpt"
    model = model_class("pytorch_lightning")()
    tr = trainer("pytorch_lightning", tmp_path, enable_checkpointing=True,
                 callbacks=[CyclicLearningRate(**clr), ModelCheckpoint(dirpath=str(ckpt_dir)), Preempted()])
    tr.fit(model, data())
    ckpt = next(ckpt_dir.glob("*.ckpt"))
    resumed = model_class("pytorch_lightning")()
    tr2 = trainer("pytorch_lightning", tmp_path, callbacks=[CyclicLearningRate(**clr)])
    tr2.fit(resumed, data(), ckpt_path=str(ckpt))
    assert model.lrs + resumed.lrs == full.lrs
    assert all(torch.equal(x, y) for x, y in zip(weights(full), weights(resumed)))


@pytest.mark.parametrize("package", ["lightning.pytorch",
                                     pytest.param("pytorch_lightning", marks=refused_by_old_pytorch_lightning)])
def test_manual_optimization_range_test_leaves_the_step_counter_alone(package: str, tmp_path: Any) -> None:
    callback = CyclicLearningRate(range_test=RangeTestConfig(num_steps=20, min_lr=1e-5, max_lr=1.0))
    model = manual_model_class(package)()
    tr = trainer(package, tmp_path, callbacks=[callback], max_epochs=1)
    tr.fit(model, data())
    assert tr.global_step == 6  # the 6 real steps of one epoch; the sweep's 20 opt.step() calls are undone
    assert len(model.lrs) == 20 + 6


@refused_by_old_pytorch_lightning
def test_tune_cycle_length_with_a_pytorch_lightning_model(tmp_path: Any) -> None:
    """The tuner builds each trial's Trainer from the model's own package (a ``lightning.pytorch.Trainer``
    refuses a ``pytorch_lightning`` model); the range test that finds the bounds runs in such a Trainer too."""
    pytest.importorskip("optuna")
    import pytorch_lightning as pl

    from lightning_clr import tune_cycle_length

    base = model_class("pytorch_lightning")

    class Validated(base):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return data()

        def val_dataloader(self) -> DataLoader:
            return DataLoader(regression_data(16, seed=1), batch_size=16)

    from lightning_clr.tuning import OutputConfig

    result = tune_cycle_length(
        Validated, Data, n_trials=1, max_epochs=4, range_test=RangeTestConfig(num_steps=20, min_lr=1e-5, max_lr=1.0),
        output=OutputConfig(output_dir=str(tmp_path / "tuning"), plot=False, logger=False, progress_bar=False),
    )
    assert result.best_value is not None and result.epochs_trained == 4
    assert result.steps_per_epoch == 6 and 0 < result.base_lr < result.best_max_lr
