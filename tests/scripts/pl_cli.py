"""``pytorch_lightning.cli.LightningCLI`` on a ``pytorch_lightning`` model: the standalone package's own CLI, to
check which callbacks its ``--trainer.callbacks`` accepts. Prints the callbacks' class paths and the LR of each
optimizer step, one JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from helpers import regression_data  # noqa: E402
from pytorch_lightning.cli import LightningCLI  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_clr._compat import callback_bases  # noqa: E402


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 1)
        self.lrs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(32), batch_size=8)


class HalvingLR(*callback_bases()):  # type: ignore[misc]
    """A callback on `_compat.callback_bases()`: halves the LR before every optimizer step."""

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        for group in optimizer.param_groups:
            group["lr"] /= 2


def main() -> None:
    cli = LightningCLI(Regressor, run=False, save_config_kwargs={"overwrite": True})
    cli.trainer.fit(cli.model)
    names = [f"{type(c).__module__}.{type(c).__name__}" for c in cli.trainer.callbacks]
    print(json.dumps({"callbacks": names, "lrs": cli.model.lrs}))


if __name__ == "__main__":
    main()
