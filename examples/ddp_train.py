"""Train the digits MLP with CyclicLearningRate on several processes: the same script for every launcher.

The callback needs no change for DDP: the range test runs once, on all ranks together, and every rank
gets the same bounds and the same LR at every step. Lightning does the multi-process part.

Launch it any of these ways (``--devices`` is the number of processes per node):

    python examples/ddp_train.py --devices 2                                  # Lightning starts the ranks
    python examples/ddp_train.py --devices 2 --strategy ddp_spawn            # (or ddp_fork; notebooks)
    torchrun --nproc-per-node 2 examples/ddp_train.py --devices 2            # torchrun starts the ranks
    srun python examples/ddp_train.py --devices 2 --num-nodes 1              # inside an sbatch job,
                                                                             # see examples/slurm/
    torchrun --nproc-per-node 2 examples/ddp_train.py --devices 2 --accelerator gpu --precision bf16-mixed

On CPU the ranks talk through gloo, on GPUs through NCCL; Lightning picks it. Needs scikit-learn for the
bundled digits data (``pip install scikit-learn``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.digits`, also under torchrun/srun

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

from examples.digits import DigitsClassifier, DigitsDataModule  # noqa: E402
from lightning_clr import CyclicLearningRate, RangeTestConfig  # noqa: E402


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2, help="processes per node (= --nproc-per-node / --ntasks-per-node)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="ddp", help="ddp (also for torchrun and srun), ddp_spawn or ddp_fork")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--precision", default="32-true", help="e.g. 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32, help="per rank (global: devices x nodes x this)")
    p.add_argument("--base-lr", type=float, default=None, help="give both bounds to skip the range test")
    p.add_argument("--max-lr", type=float, default=None)
    p.add_argument("--range-steps", type=int, default=100, help="optimizer steps of the range test")
    p.add_argument("--half-cycle-epochs", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--default-root-dir", default=None, help="where logs and the range test's plot go")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True)
    clr = CyclicLearningRate(
        base_lr=args.base_lr,
        max_lr=args.max_lr,
        half_cycle_epochs=args.half_cycle_epochs,
        range_test=RangeTestConfig(num_steps=args.range_steps),
    )
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=args.max_epochs,
        callbacks=[clr, ReportBounds()],
        default_root_dir=args.default_root_dir,
        enable_checkpointing=False,
    )
    model = DigitsClassifier()
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=args.batch_size, seed=args.seed))
    # With ddp_spawn/ddp_fork only the parent process returns here, and it gets the weights and
    # `callback_metrics` back, not the callback's resolved state: `clr.base_lr` stays as given there.
    # ReportBounds (below) reads it where it lives, in rank 0's process, at the end of the fit.
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


class ReportBounds(pl.Callback):
    """Prints, from global rank 0 at fit end, the bounds and cycle every rank used."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clr = next(c for c in trainer.callbacks if isinstance(c, CyclicLearningRate))
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        rank_zero_info(
            f"world size {trainer.world_size}: base_lr={clr.base_lr!r}, max_lr={clr.max_lr!r},"
            f" step_size_up={clr.step_size_up} optimizer steps ({clr.steps_per_epoch} per epoch and rank);"
            f" metrics {metrics}"
        )

if __name__ == "__main__":
    main()
