"""lightning_clr in two minutes: automatic cyclical learning rates on scikit-learn's digits.

1. ``CyclicLearningRate()`` with no bounds: at fit start, the LR range test sweeps the LR and picks
   ``base_lr`` and ``max_lr``; the callback then sets the LR (and momentum) every optimizer step.
2. The same model with a fixed LR (SGD 0.01, momentum 0.9) and the same budget: as many optimizer
   steps as the CLR run's training plus its range test.
3. Both run for a few seeds; the script prints the chosen bounds and the validation accuracies, and saves
   the range-test curve and the LR trace as PNG files under ``demo_output/``.

Run it with ``make demo`` or ``python examples/demo.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits import DigitsClassifier, DigitsDataModule  # noqa: E402
from lightning_clr import CyclicLearningRate, RangeTestConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class LRTrace(Callback):
    """Records the LR and momentum of every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.momenta: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        group = optimizer.param_groups[0]
        self.lrs.append(float(group["lr"]))
        self.momenta.append(float(group.get("momentum", 0.0)))


def trainer(out_dir: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(out_dir),
                      num_sanity_val_steps=0, callbacks=callbacks, **kwargs)


def val_accuracy(t: pl.Trainer, model: pl.LightningModule, dm: DigitsDataModule) -> float:
    return float(t.validate(model, datamodule=dm, verbose=False)[0]["val_acc"])


def run_clr(seed: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    dm, model = DigitsDataModule(batch_size=args.batch_size, seed=0), DigitsClassifier(hidden=args.hidden)
    rt_kwargs = {k: v for k, v in (("rule", args.rule), ("base_divisor", args.base_divisor)) if v is not None}
    range_test = RangeTestConfig(**rt_kwargs) if rt_kwargs else None
    extra = {} if args.cycle_momentum is None else {"cycle_momentum": args.cycle_momentum}
    clr = CyclicLearningRate(base_lr=args.base_lr, max_lr=args.max_lr, range_test=range_test, **extra)
    trace = LRTrace()
    t = trainer(out_dir / f"clr_seed{seed}", [clr, trace], max_epochs=args.epochs)
    t0 = time.perf_counter()
    t.fit(model, datamodule=dm)
    seconds = time.perf_counter() - t0
    result = clr.range_test_result
    return {"acc": val_accuracy(t, model, dm), "steps": t.global_step, "seconds": seconds, "clr": clr,
            "trace": trace, "range_test": result, "range_test_steps": len(result.lrs) if result is not None else 0}


def run_fixed(seed: int, args: argparse.Namespace, out_dir: Path, max_steps: int) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    dm, model = DigitsDataModule(batch_size=args.batch_size, seed=0), DigitsClassifier(hidden=args.hidden, lr=0.01)
    t = trainer(out_dir / f"fixed_seed{seed}", [], max_steps=max_steps, max_epochs=-1)
    t0 = time.perf_counter()
    t.fit(model, datamodule=dm)
    return {"acc": val_accuracy(t, model, dm), "steps": t.global_step, "seconds": time.perf_counter() - t0}


def save_plots(first: dict[str, Any], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install lightning-clr[plot]): no PNG files written")
        return []
    saved = []
    result = first["range_test"]
    if result is not None:
        path = out_dir / "range_test.png"
        plotted = result.plot()
        fig = getattr(plotted, "figure", plotted)  # an Axes or a Figure
        fig.savefig(path, dpi=110)
        plt.close(fig)
        saved.append(path)
    trace = first["trace"]
    fig, ax1 = plt.subplots(figsize=(8, 4))
    ax1.plot(trace.lrs, color="C0", label="learning rate")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("learning rate", color="C0")
    ax2 = ax1.twinx()
    ax2.plot(trace.momenta, color="C1", alpha=0.7, label="momentum")
    ax2.set_ylabel("momentum", color="C1")
    clr = first["clr"]
    ax1.set_title(f"CyclicLearningRate: {clr.base_lr:.3g}..{clr.max_lr:.3g}, step_size_up={clr.step_size_up}")
    fig.tight_layout()
    path = out_dir / "lr_trace.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    saved.append(path)
    return saved


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=16, help="training epochs of the CLR runs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per recipe (medians are reported)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--base-lr", type=float, default=None, help="skip the range test: give both bounds")
    p.add_argument("--max-lr", type=float, default=None)
    p.add_argument("--rule", choices=["smith", "valley", "steepest", "minimum"], default=None,
                   help="the range test's bound rule (default: the library's default)")
    p.add_argument("--base-divisor", type=float, default=None, help="the range test's base_lr = max_lr / this")
    p.add_argument("--cycle-momentum", action=argparse.BooleanOptionalAction, default=None,
                   help="cycle momentum inversely to the LR (default: the library's default)")
    p.add_argument("--out-dir", default=str(ROOT / "demo_output"))
    args = p.parse_args(argv)
    for name in ("epochs", "seeds", "batch_size", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("lightning.pytorch", "lightning.fabric"):  # keep the output to the demo's own lines
        logging.getLogger(name).setLevel(logging.WARNING)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    clr_runs, fixed_runs = [], []
    for seed in range(args.seeds):
        c = run_clr(seed, args, out_dir)
        budget = c["steps"] + c["range_test_steps"]
        f = run_fixed(seed, args, out_dir, max_steps=budget)
        clr_runs.append(c)
        fixed_runs.append(f)
        how = f"range test ({c['range_test_steps']} steps)" if c["range_test"] is not None else "given"
        print(f"seed {seed}: CLR bounds {c['clr'].base_lr:.3g}..{c['clr'].max_lr:.3g} ({how}), "
              f"step_size_up={c['clr'].step_size_up}: val acc {c['acc']:.4f} | fixed LR 0.01, {f['steps']} steps: "
              f"val acc {f['acc']:.4f}", flush=True)
    clr_acc = statistics.median(r["acc"] for r in clr_runs)
    fixed_acc = statistics.median(r["acc"] for r in fixed_runs)
    first = clr_runs[0]
    print()
    print(f"Chosen bounds (seed 0): base_lr={first['clr'].base_lr:.4g}, max_lr={first['clr'].max_lr:.4g}, "
          f"step_size_up={first['clr'].step_size_up} optimizer steps")
    print(f"Final validation accuracy, median of {args.seeds} seeds, same number of optimizer steps "
          f"({first['steps']} training + {first['range_test_steps']} range test):")
    print(f"  CyclicLearningRate() : {clr_acc:.4f}")
    print(f"  fixed LR 0.01        : {fixed_acc:.4f}")
    for path in save_plots(first, out_dir):
        print(f"saved {path}")
    print(f"done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
