"""A standalone tuning worker, run through ``subprocess`` by tests/tuning/test_tuner.py.

Modes:
- ``ours`` (default): ``tune_cycle_length`` with the given storage/strategy. Every rank appends one JSON
  line per trial fit to ``OUT/rank{global_rank}.jsonl`` from ``on_fit_end`` (with ddp_spawn only the parent
  returns from ``fit``): the cycle length it trained with, the epochs it ran, the bounds.
- ``naive``: the optuna-integration pattern that breaks under DDP: a callback in which EVERY rank calls
  ``study.ask()`` on the shared study and trains with its own suggestion.

Example:
    python tests/scripts/tune_worker.py --out /tmp/o --n-trials 2 --strategy ddp --devices 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
from helpers import SameTaskData as DataModule  # noqa: E402
from processes import start_together, wait_until  # noqa: E402

from lightning_clr import CyclicLearningRate, RangeTestConfig, tune_cycle_length  # noqa: E402
from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig  # noqa: E402


class Model(pl.LightningModule):
    def __init__(self, sleep: float = 0.0, bad_from_fit: int = -1, build_until: str = "") -> None:
        super().__init__()
        if Model.fits == 1 and build_until:  # the first trial's model (the monitor probe builds one before)
            wait_until(Path(build_until).exists, build_until)  # a slow build: it ends when the test says so
        self.sleep = sleep
        self.bad = bad_from_fit >= 0 and Model.fits >= bad_from_fit  # this trial's model scores badly
        Model.fits += 1
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    fits = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if STOP_AT == ["fit"] and self.current_epoch == 1:  # the first trial is well under way
            stop_here()
        if self.sleep:
            time.sleep(self.sleep)
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y) * (100.0 if self.bad else 1.0)  # plainly worse
        self.log("val_loss", loss, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


STOP_AT: list[str] = []  # `--stop-at`: where this worker stops itself (SIGSTOP), once


def stop_here() -> None:
    STOP_AT.clear()
    os.kill(os.getpid(), signal.SIGSTOP)


def stop_in_ask() -> None:
    """Stop inside ``study.ask``: the trial exists (RUNNING) but has no parameter yet, nor any heartbeat."""
    original = optuna.storages.RDBStorage.set_trial_param

    def stopping(self: Any, *args: Any) -> Any:
        optuna.storages.RDBStorage.set_trial_param = original
        stop_here()
        return original(self, *args)

    optuna.storages.RDBStorage.set_trial_param = stopping


class Record(Callback):
    """Every rank writes what it trained with, from a hook (works in spawned children too)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clr = next((c for c in trainer.callbacks if isinstance(c, CyclicLearningRate)), None)
        row = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "step_size_up": clr.step_size_up if clr else None,
            "half_cycle_epochs": clr.settings.half_cycle_epochs if clr else None,
            "base_lr": clr.base_lr if clr else None,
            "max_lr": clr.max_lr if clr else None,
            "epochs": trainer.current_epoch,
            "max_epochs": trainer.fit_loop.max_epochs,
            "first_weight": float(pl_module.net[0].weight.detach().flatten()[0]),
        }
        with open(Path(self.out) / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


class NaiveTrialCallback(Callback):
    """The broken pattern: every rank asks the shared study for its own trial at setup."""

    def __init__(self, storage: str, study_name: str, clr: CyclicLearningRate) -> None:
        self.storage, self.study_name, self.clr = storage, study_name, clr

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import optuna

        from lightning_clr.tuning._pruning_callback import destroy_process_group_at_exit

        destroy_process_group_at_exit()  # the gloo exit abort is not the bug shown here

        study = optuna.load_study(
            study_name=self.study_name,
            storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self.storage)),
        )
        trial = study.ask({"half_cycle_epochs": optuna.distributions.IntDistribution(1, 8)})
        # what a user without rank-0 ownership writes: each rank configures its callback from its own trial
        CyclicLearningRate.__init__(self.clr, base_lr=0.01, max_lr=0.05, fit_whole_cycles=False,
                                    half_cycle_epochs=float(trial.params["half_cycle_epochs"]))


def naive(args: argparse.Namespace) -> None:
    import optuna

    storage = os.path.join(args.out, "naive.journal")
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        study = optuna.create_study(
            study_name="naive", load_if_exists=True,
            storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
        )
        for h in (2, 4):  # what a warm start enqueues: rank 0 takes the first, rank 1 the second
            study.enqueue_trial({"half_cycle_epochs": h})
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.05, fit_whole_cycles=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy, max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[NaiveTrialCallback(storage, "naive", clr), clr, Record(args.out)],
    )
    trainer.fit(Model(), datamodule=DataModule())


RANGE_TEST = RangeTestConfig(max_lr=0.1, num_steps=12, save=False, progress_bar=False)  # short, and no divergence


def count_range_tests(out: str) -> None:
    """Every range test this process runs appends one line to ``OUT/range_tests.jsonl`` (the real test runs)."""
    import lightning_clr.range_test as rt

    original = rt.run_range_test

    def counting(*args: Any, **kwargs: Any) -> Any:
        with open(Path(out) / "range_tests.jsonl", "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "time": time.time()}) + "\n")
        return original(*args, **kwargs)

    rt.run_range_test = counting


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="ours", choices=["ours", "naive"])
    p.add_argument("--storage", default=None)
    p.add_argument("--study-name", default=None)
    p.add_argument("--n-trials", type=int, default=2)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--max-half", type=int, default=2)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--bad-from-fit", type=int, default=-1)
    p.add_argument("--build-until", default="", help="the first trial's model is built once this file exists")
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--grace", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-startup-trials", type=int, default=2)
    p.add_argument("--no-warm-start", action="store_true")
    p.add_argument("--logger", action="store_true", help="a CSV logger version per trial")
    p.add_argument("--monitor", default="val_loss")
    p.add_argument("--pruner", default="cycle_median")
    p.add_argument("--no-bounds", action="store_true", help="no base_lr/max_lr: the study's one range test")
    p.add_argument("--stop-at", choices=["ask", "fit"], default=None,
                   help="SIGSTOP this worker once: inside its first ask, or in epoch 1 of its first trial")
    p.add_argument("--start-with", nargs=2, default=None, metavar=("DIR", "N"),
                   help="start tuning together with N-1 others: each writes a file in DIR, all start once N are there")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.start_with is not None:  # workers started together open the storage at the same instant
        start_together(Path(args.start_with[0]), int(args.start_with[1]))
    if args.mode == "naive":
        return naive(args)
    if args.stop_at == "ask":
        stop_in_ask()
    STOP_AT[:] = [args.stop_at] if args.stop_at else []
    if args.no_bounds:
        count_range_tests(args.out)
    result = tune_cycle_length(
        Model,
        DataModule,
        model_kwargs={"sleep": args.sleep, "bad_from_fit": args.bad_from_fit, "build_until": args.build_until},
        trainer_kwargs={
            "accelerator": "cpu", "devices": args.devices, "strategy": args.strategy,
            "callbacks": [Record(args.out)],
        },
        n_trials=args.n_trials,
        max_epochs=args.max_epochs,
        base_lr=None if args.no_bounds else 0.01,
        max_lr=None if args.no_bounds else 0.05,
        range_test=RANGE_TEST if args.no_bounds else None,
        monitor=args.monitor,
        search=SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=args.max_half,
                           warm_start=not args.no_warm_start),
        study=StudyConfig(storage=args.storage, study_name=args.study_name, n_startup_trials=args.n_startup_trials,
                          seed=args.seed, heartbeat_interval=args.heartbeat, grace_period=args.grace,
                          pruner=args.pruner),
        output=OutputConfig(output_dir=os.path.join(args.out, "tuning"), logger=args.logger, plot=False,
                            progress_bar=False),
    )
    if result.study is not None:  # global rank 0 of this worker
        trials = [
            {"number": t.number, "state": t.state.name, "params": t.params, "user_attrs": t.user_attrs,
             "intermediate": {str(k): v for k, v in t.intermediate_values.items()}}
            for t in result.study.get_trials(deepcopy=False)
        ]
        with open(Path(args.out) / f"result_{os.getpid()}.json", "w") as f:
            json.dump({"trials": trials, "best": result.best_half_cycle_epochs}, f)


if __name__ == "__main__":
    main()
