"""One CyclicLearningRate fit on N CPU ranks (gloo); every rank writes ``OUT/rank{r}.json``.

Launched by tests/callback/test_ddp.py through ``subprocess`` in one of these ways (the script is the same):

    python ddp_fit.py --out DIR --strategy ddp --devices 2          # Lightning re-runs this script per rank
    python ddp_fit.py --out DIR --strategy ddp_spawn --devices 2
    python ddp_fit.py --out DIR --strategy ddp_fork --devices 2
    python -m torch.distributed.run --nproc-per-node 2 ddp_fit.py --out DIR --devices 2
    SLURM_NTASKS=2 SLURM_PROCID=r ... python ddp_fit.py --out DIR --devices 2   # once per rank, as srun would

A fit that raises (the sharded-strategy refusal) writes ``rank{r}.json`` with the error and exits with 3.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ddp_common, also in spawned children

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from ddp_common import CollectiveCounter, DDPModel, Fingerprint, RankReport, rank_from_env, run_rank  # noqa: E402,E501
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

from lightning_clr import CyclicLearningRate, RangeTestConfig  # noqa: E402

EXPLICIT_BASE_LR = 0.01
EXPLICIT_MAX_LR = 0.08


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for rank{r}.json")
    p.add_argument("--strategy", default="ddp", help="ddp, ddp_spawn, ddp_fork, fsdp, auto, ...")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--bounds", choices=("explicit", "auto"), default="explicit")
    p.add_argument("--range-steps", type=int, default=40, help="range test num_steps")
    p.add_argument("--range-min-lr", type=float, default=1e-4)
    p.add_argument("--range-max-lr", type=float, default=10.0)
    p.add_argument("--half-cycle-epochs", type=float, default=1.0)
    p.add_argument("--no-clr", action="store_true", help="the same fit without the callback (a baseline)")
    p.add_argument("--nan-rank", type=int, default=-1, help="this rank's loss is NaN above --nan-above-lr")
    p.add_argument("--nan-above-lr", type=float, default=math.inf)
    p.add_argument("--ckpt-dir", default=None, help="save last.ckpt there at every epoch end")
    p.add_argument("--stop-after-epochs", type=int, default=None, help="stop early, as a preempted job does")
    p.add_argument("--resume", default=None, help="fit(ckpt_path=...)")
    p.add_argument("--rank-dependent", action="store_true",
                   help="each rank builds its callback with other explicit settings (max_lr, half-cycle x (1 + rank))")
    return p.parse_args(argv)


def build(opts: argparse.Namespace) -> tuple[pl.Trainer, DDPModel, list[Any]]:
    pl.seed_everything(0, workers=True)
    model = DDPModel(batch_size=opts.batch_size, nan_rank=opts.nan_rank, nan_above_lr=opts.nan_above_lr)
    before = Fingerprint()
    callbacks: list[Any] = [before]  # before the CLR callback: sees the state before the range test
    if not opts.no_clr:
        if opts.bounds == "explicit":
            factor = 1 + rank_from_env() if opts.rank_dependent else 1
            clr = CyclicLearningRate(base_lr=EXPLICIT_BASE_LR, max_lr=EXPLICIT_MAX_LR * factor,
                                     half_cycle_epochs=opts.half_cycle_epochs * factor)
        else:
            config = RangeTestConfig(min_lr=opts.range_min_lr, max_lr=opts.range_max_lr, num_steps=opts.range_steps,
                                     save=False, progress_bar=False)
            clr = CyclicLearningRate(half_cycle_epochs=opts.half_cycle_epochs, range_test=config)
        callbacks.append(clr)
    counter = CollectiveCounter()  # after the CLR callback: see its docstring
    callbacks += [counter, RankReport(opts.out, counter, before)]
    if opts.stop_after_epochs is not None:
        callbacks.append(StopAfterEpochs(opts.stop_after_epochs))
    if opts.ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=opts.ckpt_dir, save_last=True, save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=opts.devices,
        strategy=cpu_fsdp() if opts.strategy == "fsdp_cpu" else opts.strategy,
        max_epochs=opts.max_epochs,
        logger=False,
        enable_checkpointing=opts.ckpt_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=callbacks,
    )
    return trainer, model, callbacks


class StopAfterEpochs(Callback):
    """Ends the fit after ``epochs`` epochs on every rank, as a preempted (requeued) job ends."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def cpu_fsdp() -> Any:
    """A real FSDPStrategy on CPU (gloo). ``Trainer(strategy="fsdp")`` refuses a CPU accelerator by an exact type
    check, which a subclass passes. torch's FSDP then refuses CPU itself when it wraps the model (in
    ``strategy.setup``); the callback's check in ``setup`` comes before that."""
    from lightning.pytorch.strategies import FSDPStrategy

    class CPUFSDPStrategy(FSDPStrategy):
        pass

    return CPUFSDPStrategy(process_group_backend="gloo")


def run(opts: argparse.Namespace) -> int:
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    torch.set_num_threads(1)  # 2 ranks on a shared 2-core machine
    built: list[DDPModel] = []

    def body() -> None:
        trainer, model, _ = build(opts)
        built.append(model)
        trainer.fit(model, ckpt_path=opts.resume)

    return run_rank(opts.out, body, lambda: {"training_step_calls": built[0].training_step_calls if built else None})


if __name__ == "__main__":
    sys.exit(run(parse_args()))
