"""Efficiency of ``tune_cycle_length`` against an exhaustive grid of half-cycle lengths.

Fashion-MNIST (20k training images, 10k test images as the validation set; or scikit-learn's 8x8 digits with
``--dataset digits``), a 784-64-10 MLP, SGD with momentum 0.9, CLR between 0.01 and 0.2, one torch thread.
An "epoch" is ``--epoch-batches`` (32) fresh random batches of 128, so that a 48-epoch budget fits whole cycles of
every half-cycle 1..12 epochs with little rounding. The grid trains every half-cycle ``h`` in ``1..--max-half``
exactly as the tuner trains a trial: the budget for every ``h``, the cycle fitted to it in whole cycles (so every
run ends at a cycle end; before 2026-12-07 the epochs were rounded to whole cycles of exactly ``h`` instead, the
stored ``tuning.json`` and ``tuning_pruners.json``), ``--grid-seeds`` seeds per point. The tuner gets ``--trials``
trials (warm start with Smith's 2, 4 and 8 epochs, TPE, pruning at cycle ends) and runs once per tuner seed in
``--tuner-seeds`` (spaced by 100: trial ``n`` trains with seed ``tuner seed + n``, so the seeds' trials do not
share training seeds).

Definitions (see docs/tuning.md):
- the grid's best is the ``h`` with the lowest MEDIAN over the grid seeds of the final ``val_loss``;
- one grid step is 1 epoch of half-cycle (the grid's spacing); a half-cycle that trains the same schedule as the
  grid's best (the same number of whole cycles in the budget) counts as within one step;
- the grid's cost is one run per grid point (what an exhaustive one-seed grid costs, the same seeds policy as
  the tuner, whose every trial is one run); the extra seeds only establish the ground truth.

Checks, per tuner seed: (a) the tuner's choice is within one grid step of the grid's best; (b) it trained at most
half of the grid's epochs. Exit code 0 only if both hold for every tuner seed.

Example:
    python benchmarks/tuning.py --quick      # about 10 s on 2 shared cores
    python benchmarks/tuning.py              # the numbers in docs/tuning.md (about 9 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import FASHION_DIR, RESULTS_DIR, TensorBatches, load_fashion_mnist, quiet_lightning, read_json  # noqa: E402

from lightning_clr import CyclicLearningRate, tune_cycle_length  # noqa: E402
from lightning_clr.schedule import whole_cycle_count  # noqa: E402
from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig  # noqa: E402

_DATA: dict[str, tuple[torch.Tensor, ...]] = {}


def load_data(dataset: str, n_train: int, n_val: int, data_dir: str) -> tuple[torch.Tensor, ...]:
    """``(train_x, train_y, val_x, val_y)``, flattened, scaled by the training mean and std; loaded once."""
    key = f"{dataset}-{n_train}-{n_val}"
    if key not in _DATA:
        g = torch.Generator().manual_seed(0)
        if dataset == "fashion":
            tx, ty, ex, ey = load_fashion_mnist(data_dir)
            tr, va = torch.randperm(len(tx), generator=g)[:n_train], torch.randperm(len(ex), generator=g)[:n_val]
            x_train, y_train, x_val, y_val = tx[tr].flatten(1), ty[tr], ex[va].flatten(1), ey[va]
        else:
            from examples.digits import load_digits_tensors

            x, y = load_digits_tensors()
            perm = torch.randperm(len(x), generator=g)
            va, tr = perm[:n_val], perm[n_val:][:n_train]
            x_train, y_train, x_val, y_val = x[tr], y[tr], x[va], y[va]
        mean, std = x_train.mean(), x_train.std()
        _DATA[key] = ((x_train - mean) / std, y_train, (x_val - mean) / std, y_val)
    return _DATA[key]


class MemoryData(pl.LightningDataModule):
    """In-memory tensors. The shuffle order is drawn from the global RNG at construction, so it follows the run's
    seed (the tuner seeds right before building the model and the datamodule)."""

    def __init__(self, data: tuple[torch.Tensor, ...], batch_size: int, epoch_batches: int = 0) -> None:
        super().__init__()
        self.data, self.batch_size, self.epoch_batches = data, batch_size, epoch_batches
        self.shuffle_seed = int(torch.randint(0, 2**31 - 1, (1,)))

    def train_dataloader(self) -> DataLoader:
        ds = TensorBatches(self.data[0], self.data[1])
        n = self.epoch_batches * self.batch_size or None  # an "epoch" of epoch_batches fresh random batches
        sampler = RandomSampler(ds, num_samples=n, generator=torch.Generator().manual_seed(self.shuffle_seed))
        return DataLoader(ds, sampler=BatchSampler(sampler, self.batch_size, False), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        ds = TensorBatches(self.data[2], self.data[3])
        return DataLoader(ds, sampler=BatchSampler(range(len(ds)), len(ds), False), batch_size=None)


class MLP(pl.LightningModule):
    def __init__(self, n_in: int, hidden: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.momentum = momentum

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=self.momentum)


def epochs_for(h: int, budget: int) -> int:
    return budget  # every trial of a study trains the budget; its cycle is fitted to it in whole cycles


def grid_point(args: argparse.Namespace, data: tuple, h: int, seed: int) -> tuple[float, int]:
    pl.seed_everything(seed, verbose=False)
    model, dm = MLP(data[0].shape[1], args.hidden), MemoryData(data, args.batch_size, args.epoch_batches)
    epochs = epochs_for(h, args.budget)
    clr = CyclicLearningRate(base_lr=args.base_lr, max_lr=args.max_lr, half_cycle_epochs=h)  # as the tuner's trial
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clr],
    )
    trainer.fit(model, datamodule=dm)
    return float(trainer.callback_metrics["val_loss"]), epochs


def run_tuner(args: argparse.Namespace, data: tuple, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = tune_cycle_length(
            lambda: MLP(data[0].shape[1], args.hidden), lambda: MemoryData(data, args.batch_size, args.epoch_batches),
            trainer_kwargs={"accelerator": "cpu", "num_sanity_val_steps": 0},
            n_trials=args.trials, max_epochs=args.budget, base_lr=args.base_lr, max_lr=args.max_lr,
            search=SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=args.max_half),
            study=StudyConfig(n_startup_trials=args.n_startup_trials, seed=seed, pruner=args.pruner),
            output=OutputConfig(output_dir=tmp, logger=False, plot=False, progress_bar=False),
        )
    rows = [
        {"h": r["half_cycle_epochs"], "state": r["state"], "value": r["value"],
         "epochs": r["epochs"]}
        for r in result.trials()
    ]
    return {"seed": seed, "choice": result.best_half_cycle_epochs, "epochs": result.epochs_trained,
            "seconds": round(time.perf_counter() - t0, 1), "trials": rows}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small data, 1 grid seed, 1 tuner seed (seconds)")
    p.add_argument("--dataset", choices=["fashion", "digits"], default="fashion")
    p.add_argument("--data-dir", default=FASHION_DIR)
    p.add_argument("--n-train", type=int, default=None, help="training subset size")
    p.add_argument("--n-val", type=int, default=None, help="validation subset size (Fashion-MNIST: of the test set)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--budget", type=int, default=None, help="epochs of every trial (the cycle fitted to it)")
    p.add_argument("--max-half", type=int, default=None, help="grid 1..max-half epochs")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--grid-seeds", type=int, default=None)
    p.add_argument("--tuner-seeds", type=int, nargs="+", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epoch-batches", type=int, default=None,
                   help="batches per epoch (a fresh random part of the training set); 0: the whole set")
    p.add_argument("--base-lr", type=float, default=0.01)
    p.add_argument("--max-lr", type=float, default=None)
    p.add_argument("--n-startup-trials", type=int, default=2, help="completed trials before pruning starts")
    p.add_argument("--pruner", default="cycle_median", choices=["cycle_median", "cycle_halving", "none"])
    p.add_argument("--grid-only", action="store_true")
    p.add_argument("--grid-from", default=None, help="reuse the grid of an earlier JSON report with the same settings")
    p.add_argument("--out", default=None, help="JSON report (default: benchmarks/results/tuning.json; --quick: none)")
    args = p.parse_args(argv)
    q = args.quick
    args.n_train = args.n_train or (2000 if q else 20000 if args.dataset == "fashion" else 1200)
    args.n_val = args.n_val or (1000 if q else 10000 if args.dataset == "fashion" else 597)
    args.budget = args.budget or (8 if q else 48)
    args.max_half = args.max_half or (4 if q else 12)
    args.trials = args.trials or (3 if q else 5)
    args.grid_seeds = args.grid_seeds or (1 if q else 10)
    args.tuner_seeds = args.tuner_seeds or ([0] if q else [100 * i for i in range(8)])
    args.max_lr = args.max_lr or 0.2
    args.epoch_batches = args.epoch_batches if args.epoch_batches is not None else (0 if q else 32)
    args.budgets = "equal"  # a grid of the earlier rounded budgets (no such key) is not reused
    if args.out is None and not q:
        args.out = str(RESULTS_DIR / "tuning.json")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    quiet_lightning()
    data = load_data(args.dataset, args.n_train, args.n_val, args.data_dir)
    grid = list(range(1, args.max_half + 1))

    t0 = time.perf_counter()
    per_seed: dict[int, list[float]] = {}
    grid_epochs = sum(epochs_for(h, args.budget) for h in grid)  # the grid's cost: one run per point
    if args.grid_from:
        old = read_json(Path(args.grid_from))
        same = ("dataset", "n_train", "n_val", "hidden", "budget", "max_half", "grid_seeds", "batch_size", "base_lr",
                "max_lr", "epoch_batches", "budgets")
        diff = [k for k in same if old["args"].get(k) != getattr(args, k)]
        if diff:
            raise SystemExit(f"--grid-from {args.grid_from}: its grid was run with other {', '.join(diff)}")
        per_seed = {int(h): v for h, v in old["grid_val_loss_per_seed"].items()}
    for h in (h for h in grid if h not in per_seed):
        per_seed[h] = []
        for s in range(args.grid_seeds):
            per_seed[h].append(grid_point(args, data, h, 1000 + s)[0])
    for h in grid:
        vals = per_seed[h]
        print(f"grid h={h}: median val_loss {statistics.median(vals):.4f} ({epochs_for(h, args.budget)} epochs; seeds: "
              + ", ".join(f"{v:.4f}" for v in vals) + ")", flush=True)
    grid_s = time.perf_counter() - t0
    if args.grid_from:  # the reused grid's own time, plus any points run now
        grid_s += old.get("grid_seconds_all_seeds", 0.0)
    median = {h: statistics.median(v) for h, v in per_seed.items()}
    grid_best = min(median, key=median.get)
    print(f"grid best h={grid_best}; one run per point: {grid_epochs} epochs; {grid_s:.0f} s for all seeds", flush=True)
    one_run = one_run_grids(per_seed, grid)
    if one_run:
        hits = sum(r["within_one_step"] for r in one_run)
        print(f"ceiling: each grid seed taken as a one-run grid (judged against the median of the other seeds) picks"
              f" within one step of that best for {hits} of {len(one_run)} seeds: "
              + ", ".join(f"{r['choice']} (best {r['best']})" for r in one_run), flush=True)
    runs: list[dict[str, Any]] = []
    if not args.grid_only:
        run_all_tuners(args, data, grid_best, grid_epochs, runs)
        for run in runs:  # how much worse the choice is on the grid (median over its seeds) than the grid's best
            run["grid_regret"] = round(median[run["choice"]] - median[grid_best], 4) if run["choice"] else None
    passed = sum(r["within_one_step"] and r["at_most_half"] for r in runs)
    if runs:
        print(f"{passed} of {len(runs)} tuner seeds pass both checks", flush=True)
    if args.out:
        report = {
            "args": {k: v for k, v in vars(args).items() if k not in ("out", "grid_from")}, "grid": grid,
            "grid_val_loss_per_seed": per_seed, "grid_val_loss_median": median, "grid_best": grid_best,
            "grid_epochs_one_run_per_point": grid_epochs,
            "grid_best_seed_range": [min(per_seed[grid_best]), max(per_seed[grid_best])],
            "grid_seconds_all_seeds": round(grid_s, 1),
            "one_run_grids": one_run, "tuner": runs, "tuner_seeds_passing": passed, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    if runs:
        shares = [r["epoch_share"] for r in runs]
        regrets = [r["grid_regret"] for r in runs if r["grid_regret"] is not None]
        spread = max(per_seed[grid_best]) - min(per_seed[grid_best])
        print(f"pruner {args.pruner}: median epoch share {statistics.median(shares):.1%} of the grid; regret median"
              f" {statistics.median(regrets):.4f}, max {max(regrets):.4f}; one run's seed spread at the grid's best"
              f" {spread:.4f}", flush=True)
    return 0 if passed == len(runs) else 1


def one_run_grids(per_seed: dict[int, list[float]], grid: list[int]) -> list[dict[str, Any]]:
    """What an exhaustive grid that trains every length once would pick, for each grid seed in turn, judged
    against the grid's best by the median of the OTHER seeds (leave one out: the seed that chooses does not also
    define the truth). The same check as the tuner's (a), for the grid itself: its ceiling under seed noise."""
    n = min(len(per_seed[h]) for h in grid)
    rows = []
    for s in range(n if n > 2 else 0):
        choice = min(grid, key=lambda h: per_seed[h][s])
        rest = {h: statistics.median(v[:s] + v[s + 1:]) for h, v in per_seed.items()}
        best = min(rest, key=rest.get)
        rows.append({"seed_index": s, "choice": choice, "best": best, "within_one_step": abs(choice - best) <= 1})
    return rows


def run_all_tuners(args: argparse.Namespace, data: tuple, grid_best: int, grid_epochs: int, runs: list) -> None:
    for seed in args.tuner_seeds:
        run = run_tuner(args, data, seed)
        run["within_one_step"] = run["choice"] is not None and (
            abs(run["choice"] - grid_best) <= 1  # or the same schedule: the same whole cycles in the budget
            or whole_cycle_count(args.budget, run["choice"]) == whole_cycle_count(args.budget, grid_best))
        run["epoch_share"] = round(run["epochs"] / grid_epochs, 3)
        run["at_most_half"] = run["epochs"] <= 0.5 * grid_epochs
        trials = ", ".join(
            f"{t['h']}: {t['value']:.4f}" + (f" pruned at {t['epochs']}" if t["state"] == "PRUNED" else "")
            if t["value"] is not None else f"{t['h']}: {t['state']}" for t in run["trials"]
        )
        print(f"tuner seed {seed}: chose h={run['choice']} (within one step: {run['within_one_step']}), "
              f"{run['epochs']} epochs = {run['epoch_share']:.0%} of the grid, {run['seconds']:.0f} s; [{trials}]",
              flush=True)
        runs.append(run)


if __name__ == "__main__":
    raise SystemExit(main())
