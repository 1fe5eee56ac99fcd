"""The divergence guard on N CPU ranks (gloo): only rank 1's loss blows up; every rank must take the same decision
at the same step. Each rank writes ``OUT/rank{r}.json`` (ddp_common.RankReport) and ``OUT/guard{r}.json``.

    python guard_ddp.py --out DIR --strategy ddp_fork --devices 2

Rank ``--inflate-rank``'s reported loss is 1000x its true value once the LR exceeds ``--inflate-above-lr`` (its
gradient is the true one, so the weights stay the same on every rank): the divergence is visible in that rank's
loss only. The guard averages the ranks' windows (one all_reduce per check) and rolls every rank back alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ddp_common, also in spawned children

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from ddp_common import CollectiveCounter, DDPModel, RankReport  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from lightning_clr import CyclicLearningRate, DivergenceGuard  # noqa: E402


class InflatedModel(DDPModel):
    def __init__(self, inflate_rank: int, inflate_above_lr: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inflate_rank, self.inflate_above_lr = inflate_rank, inflate_above_lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        if self.global_rank == self.inflate_rank and lr > self.inflate_above_lr:
            loss = loss + 999.0 * loss.detach()  # the value x1000, the gradient unchanged
            self.local_losses[-1] = (float(lr), float(loss.detach()))
        return loss


class GuardReport(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clr = next(c for c in trainer.callbacks if isinstance(c, CyclicLearningRate))
        plan = clr.plan
        report = {"interventions": list(plan.interventions) if plan else None,
                  "lr_scale": plan.lr_scale if plan else None, "max_lr": clr.max_lr, "base_lr": clr.base_lr}
        (Path(self.out) / f"guard{trainer.global_rank}.json").write_text(json.dumps(report))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="ddp_fork")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--inflate-rank", type=int, default=1)
    p.add_argument("--inflate-above-lr", type=float, default=0.05)
    p.add_argument("--no-guard", action="store_true")
    opts = p.parse_args()
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    torch.set_num_threads(1)
    pl.seed_everything(0, workers=True)
    model = InflatedModel(opts.inflate_rank, opts.inflate_above_lr, batch_size=16)
    guard = DivergenceGuard(enabled=not opts.no_guard, check_every=2)
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.08, step_size_up=8, final_lr_ratio=1.0, guard=guard)
    counter = CollectiveCounter()  # after the CLR callback: its batch-end hook sees the guard's all_reduce
    trainer = pl.Trainer(accelerator="cpu", devices=opts.devices, strategy=opts.strategy, max_epochs=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=True,
                         callbacks=[clr, counter, RankReport(opts.out, counter), GuardReport(opts.out)])
    try:
        trainer.fit(model)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
