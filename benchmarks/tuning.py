"""Efficiency of ``tune_cycle_length`` against an exhaustive grid of half-cycle lengths.

On scikit-learn's bundled 8x8 digits (nothing downloaded), a one-hidden-layer MLP, SGD with momentum, fixed
CLR bounds. The grid trains every half-cycle length ``h`` in the range with the same per-trial budget and
rounding as the tuner (``2h * max(1, round(budget / 2h))`` epochs, so every run ends at a cycle end). The
tuner then gets ``--trials`` trials (warm start with Smith's 2, 4 and 8 epochs, TPE, pruning at cycle ends).

Checks (exit code 1 if one fails): the tuner's choice is within one grid step of the grid's best, and it
trained at most half of the grid's total epochs. Each grid point is the mean over ``--grid-seeds`` seeds,
so that the grid's best is not one lucky seed.

Example:
    python benchmarks/tuning.py --quick      # about 30 s on 2 shared cores
    python benchmarks/tuning.py              # the numbers in docs/tuning.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.digits import DigitsClassifier, DigitsDataModule  # noqa: E402
from lightning_clr import CyclicLearningRate, tune_cycle_length  # noqa: E402

BASE_LR, MAX_LR = 0.01, 1.0  # high enough that the cycle length matters on this easy task


def epochs_for(h: int, budget: int) -> int:
    return 2 * h * max(1, round(budget / (2 * h)))


def grid_point(h: int, budget: int, seed: int, batch_size: int, max_lr: float) -> tuple[float, int]:
    pl.seed_everything(seed, verbose=False)
    model = DigitsClassifier(hidden=32)
    dm = DigitsDataModule(batch_size=batch_size)
    epochs = epochs_for(h, budget)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[CyclicLearningRate(base_lr=BASE_LR, max_lr=max_lr, half_cycle_epochs=h, fit_whole_cycles=False)],
    )
    trainer.fit(model, datamodule=dm)
    return float(trainer.callback_metrics["val_loss"]), epochs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one seed per grid point instead of three")
    p.add_argument("--budget", type=int, default=None, help="epochs per trial (rounded to whole cycles)")
    p.add_argument("--max-half", type=int, default=None, help="grid 1..max-half epochs")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--grid-seeds", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-lr", type=float, default=MAX_LR)
    p.add_argument("--grid-only", action="store_true")
    p.add_argument("--tuner-seed", type=int, default=0, help="sampler seed; trial n trains with seed + n")
    p.add_argument("--n-startup-trials", type=int, default=2, help="completed trials before pruning starts")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "tuning.json"))
    args = p.parse_args()
    budget = args.budget or 16
    max_half = args.max_half or 8
    trials = args.trials or 4
    grid_seeds = args.grid_seeds or (1 if args.quick else 3)
    grid = list(range(1, max_half + 1))

    t0 = time.perf_counter()
    grid_values: dict[int, float] = {}
    grid_epochs = 0
    for h in grid:
        values = []
        for s in range(grid_seeds):
            value, epochs = grid_point(h, budget, 100 + s, args.batch_size, args.max_lr)
            values.append(value)
            grid_epochs += epochs if s == 0 else 0  # the grid's cost: one run per point
        grid_values[h] = sum(values) / len(values)
        per_seed = ", ".join(f"{v:.3f}" for v in values)
        print(f"grid h={h}: val_loss={grid_values[h]:.4f} ({epochs_for(h, budget)} epochs; seeds: {per_seed})",
              flush=True)
    grid_s = time.perf_counter() - t0
    grid_best = min(grid_values, key=grid_values.get)
    if args.grid_only:
        return 0

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = tune_cycle_length(
            DigitsClassifier, DigitsDataModule, model_kwargs={"hidden": 32},
            datamodule_kwargs={"batch_size": args.batch_size}, trainer_kwargs={"accelerator": "cpu"},
            n_trials=trials, max_epochs=budget, min_half_cycle_epochs=1, max_half_cycle_epochs=max_half,
            base_lr=BASE_LR, max_lr=args.max_lr, n_startup_trials=args.n_startup_trials, output_dir=tmp,
            logger=False, plot=False, progress_bar=False, seed=args.tuner_seed,
        )
    tune_s = time.perf_counter() - t0
    choice = result.best_half_cycle_epochs
    ok_choice = choice is not None and abs(choice - grid_best) <= 1
    ratio = result.epochs_trained / grid_epochs
    ok_cost = ratio <= 0.5
    report: dict[str, Any] = {
        "budget_epochs_per_trial": budget, "grid": grid, "grid_val_loss": grid_values, "grid_best": grid_best,
        "grid_epochs": grid_epochs, "grid_seconds_all_seeds": round(grid_s, 1), "tuner_trials": trials,
        "tuner_seed": args.tuner_seed, "tuner_choice": choice, "tuner_epochs": result.epochs_trained,
        "tuner_seconds": round(tune_s, 1),
        "epoch_ratio": round(ratio, 3), "tuner_trials_table": result.trials(),
        "within_one_grid_step": ok_choice, "at_most_half_the_epochs": ok_cost, "cpu_count": os.cpu_count(),
    }
    print(f"grid best h={grid_best} ({grid_epochs} epochs); tuner chose h={choice} with {result.epochs_trained}"
          f" epochs ({ratio:.0%} of the grid); grid {grid_s:.0f} s for {grid_seeds} seed(s), tuner {tune_s:.0f} s")
    print(f"within one grid step: {ok_choice}; at most 50% of the grid's epochs: {ok_cost}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0 if ok_choice and ok_cost else 1


if __name__ == "__main__":
    raise SystemExit(main())
