"""Issue 12: ``CyclicLearningRate()`` with every default on a small noisy regression, where the optimizer's LR
(1e-4) is far too low on purpose so that only the range test can rescue the fit.

8 features, MLP 8-32-1, SGD with momentum 0.9, MSE, batches of 8 rows: consecutive batch losses differ by
1.5-2x in the median (per-batch noise sigma 0.45-0.75 in log units). Before the noise-robust reading the range
test read 2.5e-7 (64 rows) or fell back to the optimizer's 1e-4 (512 rows), and the test MSE was 10.6 / 4.3
against 0.05 / 0.022 for the best constant LR. The grid of constant LRs is trained here, in the test, with the
same model, data and epochs, on the same three seeds (model initialization and data order): a constant LR at
the edge of stability (0.022 here) ends anywhere between 0.04 and a divergence from one seed to the next, so a
single seed's best is luck, and the comparison is between medians over the seeds, as the oracle of
benchmarks/panel.py is.

The constant LR here is 0.01, the best of the full seven-LR grid (1e-3 .. 1e-1) on both sizes, trained in this
test on the same seeds (it was a three-LR grid around it before; its other two LRs were never the best, and
dropping them halved the test's time). The full grid is the panel's ``issue64`` and ``issue512`` tasks
(``python benchmarks/panel.py --task issue64``), where a move of the best constant LR would show.
"""

from __future__ import annotations

import math
import statistics
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_clr import CyclicLearningRate

DIM = 8
BEST_CONSTANT_LR = 0.01  # the full grid's best on both sizes (benchmarks/panel.py, tasks issue64 and issue512)
TOO_LOW = 1e-4


def regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows of one fixed linear task (weights from seed 0) with label noise 0.1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    y = x @ torch.randn(DIM, 1, generator=torch.Generator().manual_seed(0)) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


class MLP(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def test_mse(rows: int, epochs: int, lr: float, callbacks: list[pl.Callback], tmp_path, seed: int = 0) -> float:
    torch.manual_seed(seed)
    x, y = regression(rows, seed=1)
    x_test, y_test = regression(1024, seed=2)
    model = MLP(lr)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a diverging grid LR warns; its MSE (nan) says enough
        trainer.fit(model, train)
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(x_test), y_test))


test_mse.__test__ = False  # a helper, not a test

SEEDS = (0, 1, 2)


def median(values: list[float]) -> float:
    return statistics.median(v if math.isfinite(v) else math.inf for v in values)


@pytest.mark.timeout(600)  # 6 fits per case: the longest single-process tests of the suite
@pytest.mark.parametrize(
    "rows, epochs",
    [
        # Measured: CyclicLearningRate() 0.0721, 0.1034, 0.0788 (median 1.34x LR 0.01's median: 0.0488, 0.0950,
        # 0.0589); before the bottom-of-the-curve reading 2.12x on seed 0 alone.
        (64, 100),
        # Measured: 0.0169, 0.0180, 0.0156 against 0.0224, 0.0259, 0.0212 (0.75x LR 0.01's median).
        (512, 8),
    ],
)
def test_defaults_rescue_a_far_too_low_optimizer_lr(rows: int, epochs: int, tmp_path) -> None:
    mses, maxes = [], []
    for seed in SEEDS:
        clr = CyclicLearningRate()
        mses.append(test_mse(rows, epochs, TOO_LOW, [clr], tmp_path, seed))
        result = clr.range_test_result
        assert not result.fallback, result.message
        assert clr.max_lr > 10 * TOO_LOW  # the curve itself showed the optimizer's LR to be far too low
        maxes.append(clr.max_lr)
    best = median([test_mse(rows, epochs, BEST_CONSTANT_LR, [], tmp_path, seed) for seed in SEEDS])
    assert median(mses) <= 1.5 * best, (
        f"{rows} rows: CyclicLearningRate() test MSE {mses} (max_lr {maxes}), median {median(mses):.4g}, against"
        f" {best:.4g} for the best constant LR {BEST_CONSTANT_LR:g} of the full grid"
    )
