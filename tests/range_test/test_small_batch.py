"""The reading at small batches, on a real sweep: scikit-learn's digits, MLP 64-32-10, SGD momentum 0.9.

At batches of 32 rows this task trains best at max_lr 0.2 (0.3 as well; a cliff at 0.6); at batches of 8 rows,
best at 0.05, within 0.6 point at 0.1, and off a cliff at 0.2 (median val acc 0.45; benchmarks/bounds.py,
docs/benchmarks.md section 5). The sweep's curve hardly moves with the batch: the reading used to put batch 8 at
0.165-0.19. The per-batch noise does move (sigma about 2-3x higher at batch 8), and the reading scales max_lr by
it (``small_batch_factor``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_clr import RangeTestConfig, lr_range_test
from lightning_clr.range_test._reading import SMALL_BATCH_SIGMA, small_batch_factor
from lightning_clr.range_test._rules import suggest

CLIFF_B8 = 0.2  # fixed bounds at max_lr 0.2 lost half the accuracy at batch 8
BEST_B32 = 0.2


class DigitsMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def digits() -> TensorDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).flatten(1) / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[round(0.2 * len(x)):]  # the demo's
    return TensorDataset(x[perm], torch.tensor(data.target, dtype=torch.long)[perm])


def read(batch_size: int, seed: int) -> tuple[float, float]:
    """The range test's max_lr and the small-batch factor it applied."""
    pl.seed_everything(seed, verbose=False)
    model = DigitsMLP()
    loader = DataLoader(digits(), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    result = lr_range_test(trainer, model, train_dataloaders=loader,
                           config=RangeTestConfig(save=False, progress_bar=False))
    again = suggest(result.lrs, result.smoothed_losses, "smith", fallback_max_lr=0.01, raw=result.losses)
    assert again.max_lr == pytest.approx(result.max_lr, rel=1e-9)
    return result.max_lr, again.points.get("small_batch_factor", 1.0)


def test_small_batch_factor() -> None:
    assert small_batch_factor(0.0) == small_batch_factor(SMALL_BATCH_SIGMA) == 1.0
    assert small_batch_factor(2 * SMALL_BATCH_SIGMA) == pytest.approx(0.5)
    assert small_batch_factor(0.3) == 1.0  # a noisy curve (a regression's loss) keeps its own reading


@pytest.mark.slow  # five real sweeps: 20 s on an idle 2-core machine, minutes on a loaded one
def test_batch_8_reads_below_the_cliff_and_batch_32_stays_on_its_best() -> None:
    small = [read(8, seed) for seed in (0, 1, 2)]
    print("batch 8", small)
    assert all(factor < 1 for _, factor in small), small
    assert max(lr for lr, _ in small) < CLIFF_B8 / 1.5, small  # without the factor: 0.165-0.19 (the panel's seeds)
    assert sorted(lr for lr, _ in small)[1] <= 0.1, small
    large = [read(32, seed) for seed in (0, 1)]
    print("batch 32", large)
    assert min(lr for lr, _ in large) >= BEST_B32 * 0.6, large
