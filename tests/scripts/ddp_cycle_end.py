"""CycleEndCheckpoint and CycleEndEarlyStopping on 2 CPU ranks (gloo); every rank writes ``OUT/rank{r}.json``.

Run by tests/callback/test_cycle_end.py through ``subprocess`` (``strategy="ddp"`` re-runs this script per rank):

    python ddp_cycle_end.py --out DIR --devices 2

Each rank validates on its own shard without ``sync_dist``, so the ranks see different metrics, and each rank
builds its early stopping with other settings: rank 1's ``min_delta`` is so large that no cycle end after its
first improves, rank 0's is 0. Every rank must still stop at the same cycle end (rank 1's decision, shared),
and each rank gives its checkpoint callback its own folder: the files land only in rank 0's (Lightning takes
rank 0's folder and rank 0 writes).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ddp_common

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from ddp_common import DDPModel, rank_from_env, regression_data, run_rank, write_json  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_clr import CycleEndCheckpoint, CycleEndEarlyStopping, CyclicLearningRate  # noqa: E402


class ValidatedModel(DDPModel):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))  # this rank's shard only: no sync_dist

    def val_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(n=64, seed=1), batch_size=16)  # Lightning shards it per rank


class Report(Callback):
    def __init__(self, out: str, ckpt: CycleEndCheckpoint, stop: CycleEndEarlyStopping,
                 clr: CyclicLearningRate) -> None:
        self.out, self.ckpt, self.stop, self.clr = out, ckpt, stop, clr

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        plan = self.clr.plan
        write_json(self.out, trainer.global_rank, {
            "global_rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "cycle_length": plan.cycle_length if plan else None,
            "stopped_cycle": self.stop.stopped_cycle,
            "stopped_step": self.stop.stopped_step,
            # EarlyStopping.stopping_reason is newer than the Lightning floor
            "stopping_reason": getattr(getattr(self.stop, "stopping_reason", None), "name", None),
            "cycles_judged": [self.ckpt.cycles_judged, self.stop.cycles_judged],
            "dirpath": str(self.ckpt.dirpath),
            "best_k_models": sorted(Path(p).name for p in self.ckpt.best_k_models),
        })


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--max-epochs", type=int, default=8)
    opts = p.parse_args(argv)
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    torch.set_num_threads(1)
    rank = rank_from_env()

    def body() -> None:
        pl.seed_everything(0, workers=True)
        clr = CyclicLearningRate(base_lr=0.01, max_lr=0.08, half_cycle_epochs=1, final_lr_ratio=1.0)
        ckpt = CycleEndCheckpoint(dirpath=str(Path(opts.out) / f"ckpt_rank{rank}"), monitor="val_loss")
        stop = CycleEndEarlyStopping(monitor="val_loss", patience=1, min_delta=1e9 if rank == 1 else 0.0)
        trainer = pl.Trainer(
            accelerator="cpu", devices=opts.devices, strategy=opts.strategy, max_epochs=opts.max_epochs,
            logger=False, enable_progress_bar=False, enable_model_summary=False, deterministic=True,
            num_sanity_val_steps=0, callbacks=[clr, ckpt, stop, Report(opts.out, ckpt, stop, clr)],
        )
        trainer.fit(ValidatedModel(batch_size=32))

    return run_rank(opts.out, body)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
