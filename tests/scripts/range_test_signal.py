"""A real fit whose LR range test is long (each ``training_step`` sleeps), for tests/range_test/test_signals.py.

Usage: ``python range_test_signal.py OUT_DIR MODE``. MODE ``sweep``: ``CyclicLearningRate`` runs a 2000-step range
test (about 100 s); ``train``: the same fit without the callback, plain training (Lightning's own reaction, for
comparison). Writes ``OUT_DIR/started`` at the first ``training_step`` and ``OUT_DIR/report.json`` from
``on_exception``: the exception, the monotonic time it reached Lightning, the trainer's status, and whether
the weights were the initial ones. Then lets the exception end the process as Lightning does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_clr import CyclicLearningRate, RangeTestConfig

STEP_SECONDS = 0.05


class SlowModel(pl.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out
        self.net = nn.Linear(8, 1)
        self.sweep_steps = self.real_steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.trainer.fit_loop.epoch_loop.batch_progress.total.ready == 0:
            self.sweep_steps += 1  # no real batch has started: this is the range test
        else:
            self.real_steps += 1
        if self.sweep_steps + self.real_steps == 1:
            (self.out / "started").write_text("1")
        time.sleep(STEP_SECONDS)
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class Report(Callback):
    def __init__(self, out: Path, initial: dict[str, torch.Tensor]) -> None:
        self.out, self.initial = out, initial

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        state = pl_module.state_dict()
        report = {
            "exception": type(exception).__name__,
            "at": time.monotonic(),
            "status": str(trainer.state.status.value),
            "restored": all(torch.equal(state[k], v) for k, v in self.initial.items()),
            "sweep_steps": pl_module.sweep_steps,
            "real_steps": pl_module.real_steps,
            "global_step": trainer.global_step,
        }
        (self.out / f"report{trainer.global_rank or ''}.json").write_text(json.dumps(report))


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    model = SlowModel(out)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callbacks: list[Callback] = [Report(out, initial)]
    if mode in ("sweep", "ddp"):
        config = RangeTestConfig(num_steps=2000, min_lr=1e-6, max_lr=1e-3, save=False, progress_bar=False)
        callbacks.append(CyclicLearningRate(range_test=config))
    ddp = dict(devices=2, strategy="ddp") if mode in ("ddp", "ddp-train") else dict(devices=1)
    trainer = pl.Trainer(
        accelerator="cpu", **ddp, max_epochs=1000, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))


if __name__ == "__main__":
    main()
