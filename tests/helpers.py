"""Small real models and data shared by the tests (no mocks, no downloads)."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def regression_data(n: int = 64, dim: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader(n: int = 64, batch_size: int = 8, shuffle: bool = False, seed: int = 0) -> DataLoader:
    return DataLoader(regression_data(n, seed=seed), batch_size=batch_size, shuffle=shuffle)


def same_task_data(n: int, seed: int, dim: int = 8) -> TensorDataset:
    """``n`` noisy samples of ONE fixed linear task (weights from seed 0), so that sets drawn with different
    ``seed`` are training and validation sets of the same task."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = x @ torch.randn(dim, 1, generator=torch.Generator().manual_seed(0)) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class SameTaskData(pl.LightningDataModule):
    """``n`` shuffled training samples (seed 0) and 32 validation samples (seed 1) of one linear task."""

    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(same_task_data(self.n, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(same_task_data(32, 1), batch_size=32)


class TinyModel(pl.LightningModule):
    """A linear regressor whose optimizer is chosen by name."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.0, dim: int = 8,
                 param_groups: int = 1, log_loss: bool = True) -> None:
        super().__init__()
        self.optimizer_name = optimizer
        self.lr = lr
        self.momentum = momentum
        self.param_groups = param_groups
        self.log_loss = log_loss
        self.layer = nn.Linear(dim, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.layer(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        if self.log_loss:
            self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        if self.param_groups == 2:
            params: Any = [{"params": self.layer.parameters()}, {"params": self.head.parameters()}]
        else:
            params = self.parameters()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        if self.optimizer_name == "fused_adam":  # skips an inf step itself: GradScaler calls its step() anyway
            return torch.optim.Adam(params, lr=self.lr, fused=True)
        if self.optimizer_name == "adagrad":
            return torch.optim.Adagrad(params, lr=self.lr)
        if self.optimizer_name == "rmsprop":
            return torch.optim.RMSprop(params, lr=self.lr)
        raise ValueError(self.optimizer_name)


class LRRecorder(Callback):
    """Records, for every optimizer step, the LR (and momentum) each param group steps with."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.momenta: list[list[Optional[float]]] = []
        self.global_steps: list[int] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.momenta.append(
            [g["betas"][0] if "betas" in g else g.get("momentum") for g in optimizer.param_groups]
        )
        self.global_steps.append(trainer.global_step)


class StepLRs(Callback):
    """The LR of param group 0 that each optimizer step runs with. Read in ``on_before_optimizer_step`` (a step
    that the GradScaler does not call keeps that value) and read again by a step pre-hook registered after the
    callback's own (list this recorder after the CyclicLearningRate): a fused optimizer's skipped step under AMP
    is taken back at the next step's pre-hook, after ``on_before_optimizer_step``."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.optimizers[0].register_step_pre_hook(self._stepping)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def _stepping(self, optimizer: Any, *args: Any) -> None:
        self.lrs[-1] = float(optimizer.param_groups[0]["lr"])


class StopAt(Callback):
    """Ends the fit after ``step`` optimizer steps, as a preempted job ends: same settings, same run length."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def sqrt_scale(x: float) -> float:
    """An importable ``scale_fn`` (``"helpers:sqrt_scale"``) for tests of import paths."""
    return float(x) ** 0.5
