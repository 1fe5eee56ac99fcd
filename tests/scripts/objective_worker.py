"""A user-owned Optuna objective with ``suggest_cycle`` and ``CyclePruningCallback`` on 2 gloo ranks,
run through ``subprocess`` by tests/tuning/test_pruning_callback.py.

Launchers: ``--strategy ddp`` (Lightning re-runs this script for rank 1) and torchrun (every rank runs it):
rank 0 runs ``study.optimize``; the other ranks call the objective with ``trial=None`` once per trial.
``--strategy ddp_spawn``: the objective runs in the parent only; the study must be on disk (journal).
Every rank appends one JSON line per fit to ``OUT/rank{global_rank}.jsonl``; rank 0 of the job writes
``OUT/study.json``. Several single-process workers can share one study (``--storage``, ``--devices 1``,
``--start-with``).

Example:
    python tests/scripts/objective_worker.py --out /tmp/o --strategy ddp
    python tests/scripts/objective_worker.py --out /tmp/w0 --devices 1 --strategy auto --storage /tmp/s.journal \
        --no-bounds --n-trials 1 --start-with /tmp/barrier 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers, also in spawned children
from helpers import SameTaskData  # noqa: E402
from processes import start_together  # noqa: E402

from lightning_clr import CyclePruningCallback, CyclicLearningRate, RangeTestConfig, suggest_cycle  # noqa: E402
from lightning_clr.tuning._storage import make_storage  # noqa: E402  (journal path or URL, as the tuner takes it)


class Model(pl.LightningModule):
    def __init__(self, bad: bool, sleep: float = 0.0) -> None:
        super().__init__()
        self.bad = bad
        self.sleep = sleep
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.sleep:
            time.sleep(self.sleep)
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y) * (100.0 if self.bad else 1.0), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Record(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clr = next(c for c in trainer.callbacks if isinstance(c, CyclicLearningRate))
        row = {"rank": trainer.global_rank, "world_size": trainer.world_size, "step_size_up": clr.step_size_up,
               "half_cycle_epochs": clr.settings.half_cycle_epochs, "epochs": trainer.current_epoch,
               "base_lr": clr.base_lr, "max_lr": clr.max_lr,
               "max_epochs": trainer.fit_loop.max_epochs,
               "first_weight": float(pl_module.net[0].weight.detach().flatten()[0])}
        with open(Path(self.out) / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def count_range_tests(out: str) -> None:
    import lightning_clr.range_test as rt

    original = rt.run_range_test

    def counting(*args: Any, **kwargs: Any) -> Any:
        with open(Path(out) / "range_tests.jsonl", "a") as f:
            f.write(json.dumps({"pid": os.getpid()}) + "\n")
        return original(*args, **kwargs)

    rt.run_range_test = counting


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--n-trials", type=int, default=3)
    p.add_argument("--no-bounds", action="store_true", help="no base_lr/max_lr: the study's one range test")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--storage", default=None, help="a journal path or a database URL (default: OUT/study.journal)")
    p.add_argument("--study-name", default="own")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per training step (a slower range test)")
    p.add_argument("--start-with", nargs=2, default=None, metavar=("DIR", "N"),
                   help="start with N-1 other workers: each writes a file in DIR, all start once N are there")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.start_with is not None:
        start_together(Path(args.start_with[0]), int(args.start_with[1]))
    fits = [0]
    bounds: dict[str, Any] = dict(base_lr=0.01, max_lr=0.05)
    if args.no_bounds:  # every range test any rank runs appends a line
        bounds = dict(range_test=RangeTestConfig(max_lr=0.1, num_steps=12, save=False, progress_bar=False))
        count_range_tests(args.out)

    def objective(trial: Any) -> float:
        pl.seed_everything(fits[0], verbose=False)
        clr = suggest_cycle(trial, min_half_cycle_epochs=1, max_half_cycle_epochs=2, **bounds)
        pruning = CyclePruningCallback(trial, monitor="val_loss")
        trainer = pl.Trainer(
            accelerator="cpu", devices=args.devices, strategy=args.strategy, max_epochs=8, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[clr, pruning, Record(args.out)],
        )
        model = Model(bad=fits[0] >= 2, sleep=args.sleep)  # the third trial scores plainly worse: pruned at a cycle end
        fits[0] += 1
        trainer.fit(model, datamodule=SameTaskData(n=64, batch_size=16))
        pruning.check_pruned()
        return float(trainer.callback_metrics["val_loss"])

    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    storage = make_storage(args.storage or os.path.join(args.out, "study.journal"))
    if rank == 0:  # the only process that talks to Optuna
        study = optuna.create_study(study_name=args.study_name, storage=storage, load_if_exists=True,
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
        if args.storage is None:  # the study of this job alone: its three trials' half-cycles are known
            for h in (2, 1, 1):
                study.enqueue_trial({"half_cycle_epochs": h})
        study.optimize(objective, n_trials=args.n_trials)
        trials = [{"number": t.number, "state": t.state.name, "params": t.params,
                   "intermediate": {str(k): v for k, v in t.intermediate_values.items()}} for t in study.trials]
        with open(Path(args.out) / "study.json", "w") as f:
            json.dump(trials, f)
    else:  # rank > 0 under ddp/torchrun: no trial; the callback takes rank 0's suggestion
        for _ in range(args.n_trials):
            try:
                objective(None)
            except optuna.TrialPruned:
                pass


if __name__ == "__main__":
    main()
