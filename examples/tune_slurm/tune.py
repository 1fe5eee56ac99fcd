"""One tuning worker: joins the shared study and runs its share of the trials.

Every SLURM array task runs this script; all of them share one study in one storage (PostgreSQL here).
With ``--devices 2`` each worker trains its trials with DDP on 2 devices; launch it with
``srun`` and ``--ntasks-per-node=2`` (Lightning needs ``--ntasks-per-node`` equal to ``devices``).
Global rank 0 of each worker alone talks to Optuna; the other ranks follow through broadcasts.

Example:
    python examples/tune_slurm/tune.py --storage postgresql+psycopg2://user@dbhost/optuna --study-name clr \
        --n-trials 4 --seed "$SLURM_ARRAY_TASK_ID"
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from examples.digits import DigitsClassifier, DigitsDataModule  # noqa: E402
from lightning_clr import tune_cycle_length  # noqa: E402
from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True, help="RDB URL, or a journal file on a LOCAL disk for one machine")
    p.add_argument("--study-name", required=True)
    p.add_argument("--n-trials", type=int, default=4, help="trials run by THIS worker")
    p.add_argument("--seed", type=int, default=0, help="give every worker its own, e.g. $SLURM_ARRAY_TASK_ID")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--max-epochs", type=int, default=16)
    p.add_argument("--output-dir", default="clr_tuning")
    args = p.parse_args()
    result = tune_cycle_length(
        DigitsClassifier,
        DigitsDataModule,
        datamodule_kwargs={"batch_size": 64},
        trainer_kwargs={"accelerator": args.accelerator, "devices": args.devices,
                        "strategy": "ddp" if args.devices > 1 else "auto"},
        n_trials=args.n_trials,
        max_epochs=args.max_epochs,
        search=SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=8),
        # heartbeat 30 s: a killed task's trial is marked FAIL by the next worker after 2 minutes
        study=StudyConfig(storage=args.storage, study_name=args.study_name, seed=args.seed, heartbeat_interval=30.0),
        output=OutputConfig(output_dir=os.path.join(args.output_dir, f"worker_{args.seed}")),
    )
    if result.study is not None:
        print(f"best so far: half-cycle {result.best_half_cycle_epochs} epochs = {result.best_step_size_up} steps")


if __name__ == "__main__":
    main()
