"""A small real classifier and data module on scikit-learn's bundled 8x8 digits (nothing downloaded).

1797 images of 64 pixels, 10 classes. The data module splits them once with a fixed seed into a
training and a validation set (the validation set also serves ``test`` and ``predict``). The model
is an MLP that logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss`` and ``test_acc``.

Used by ``examples/cli.py``, the ``lightning-clr`` command's examples, the tests and ``make demo``.

Example:
    >>> import lightning.pytorch as pl
    >>> from examples.digits import DigitsClassifier, DigitsDataModule
    >>> from lightning_clr import CyclicLearningRate
    >>> trainer = pl.Trainer(max_epochs=4, callbacks=[CyclicLearningRate()])  # doctest: +SKIP
    >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())  # doctest: +SKIP

Needs scikit-learn (``pip install scikit-learn``; it is in the ``dev`` extra).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsClassifier", "DigitsDataModule", "load_digits_tensors"]

NUM_FEATURES = 64
NUM_CLASSES = 10


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ``(x, y)``: ``x`` float32 of shape (1797, 64) scaled to [0, 1], ``y`` int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("examples.digits needs scikit-learn: `pip install scikit-learn`") from err
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 8x8 digits, split once into train and validation sets.

    Args:
        batch_size: Samples per batch.
        val_fraction: Fraction of the 1797 samples held out for validation (also used by test/predict).
        seed: Seed of the split and of the training shuffle.
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> len(dm.train_dataloader())
        45
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"`val_fraction` must be a number in (0, 1), got {val_fraction!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.num_workers = num_workers
        self.train_set: Optional[TensorDataset] = None
        self.val_set: Optional[TensorDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        x, y = load_digits_tensors()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, round(self.val_fraction * len(x)))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])

    def _loader(self, dataset: Optional[TensorDataset], shuffle: bool) -> DataLoader:
        if dataset is None:
            self.setup()
            return self._loader(self.train_set if shuffle else self.val_set, shuffle)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class DigitsClassifier(pl.LightningModule):
    """A one-hidden-layer MLP for the 8x8 digits.

    ``configure_optimizers`` builds the optimizer named by ``optimizer`` with ``lr`` (and ``momentum`` for
    SGD). With LightningCLI's ``--optimizer``/``--lr_scheduler`` flags, those replace it.

    Args:
        hidden: Width of the hidden layer.
        lr: Learning rate of the optimizer (the CyclicLearningRate callback overrides it while training).
        momentum: SGD momentum (ignored by Adam, whose beta1 plays that role).
        optimizer: ``"sgd"`` or ``"adam"``.

    Example:
        >>> model = DigitsClassifier(hidden=32)
        >>> model(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        hidden: int = 64,
        lr: float = 0.01,
        momentum: float = 0.9,
        optimizer: Literal["sgd", "adam"] = "sgd",
    ) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"`hidden` must be an int >= 1, got {hidden!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"`lr` must be a number > 0, got {lr!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be a number in [0, 1), got {momentum!r}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adam', got {optimizer!r}")
        self.save_hyperparameters()
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.optimizer_name = optimizer
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss_acc(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        return loss, acc

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_acc(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", acc, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        self.log("test_loss", loss)
        self.log("test_acc", acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
