"""Cost of the LR range test, on one small MLP and synthetic data (no download).

Measures, each repeated and reported as the median:

- ``range test / plain steps``: ``run_range_test`` with ``num_steps=N`` inside a running fit, against
  ``N`` plain training steps of the same fit (both timed between callback hooks, setup excluded).
  Target <= 1.15: the test is N optimizer steps plus one in-memory snapshot and restore.
- ``lr_range_test / Tuner.lr_find``: the standalone function against Lightning's finder at the same
  ``num_training=N``, both whole calls (fit setup included). Target <= 0.7.

Wall time and process CPU time are both reported: on a shared, loaded machine the CPU-time ratios are
the steadier ones. Usage: ``python benchmarks/range_test.py [--quick] [--steps N] [--repeats R] [--threads T]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.tuner import Tuner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_clr import RangeTestConfig, lr_range_test
from lightning_clr.range_test import run_range_test

WIDTH, BATCH = 512, 128


class MLP(pl.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(256, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                                 nn.Linear(WIDTH, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def data(steps: int) -> DataLoader:
    n = BATCH * (steps + 2)  # one epoch holds the whole sweep: Tuner.lr_find stops at the epoch's end
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 256, generator=g)
    y = (x[:, :10].argmax(dim=1) + (x[:, 10] > 1).long()) % 10
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)


def trainer(root: str, **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def config(steps: int) -> RangeTestConfig:
    # No early stop, so every method runs exactly `steps` optimizer steps.
    return RangeTestConfig(min_lr=1e-5, max_lr=0.5, num_steps=steps, divergence_threshold=1e12, save=False,
                           progress_bar=False)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class Paired(Callback):
    """In one fit: the range test at ``on_train_start``, then ``max_steps`` plain steps, both timed."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_start(self, tr: pl.Trainer, model: pl.LightningModule) -> None:
        wall, cpu = clocks()
        result = run_range_test(tr, model, config(self.steps))
        assert len(result.lrs) == self.steps, f"the sweep stopped early: {result.stop_reason}"
        self.test = (time.perf_counter() - wall, time.process_time() - cpu)
        self.start = clocks()

    def on_train_end(self, tr: pl.Trainer, model: pl.LightningModule) -> None:
        self.plain = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])


def measure(steps: int, root: str, swap: bool) -> dict[str, float]:
    torch.manual_seed(0)
    paired = Paired(steps)
    trainer(root, callbacks=[paired], max_steps=steps).fit(MLP(), data(steps))
    out = {"range_test_s": paired.test[0], "plain_steps_s": paired.plain[0],
           "range_test_cpu_s": paired.test[1], "plain_steps_cpu_s": paired.plain[1]}

    def ours() -> None:
        result = lr_range_test(trainer(root, max_epochs=1), MLP(), train_dataloaders=data(steps), config=config(steps))
        assert len(result.lrs) == steps, f"the sweep stopped early: {result.stop_reason}"

    def theirs() -> None:
        Tuner(trainer(root, max_epochs=1)).lr_find(MLP(), train_dataloaders=data(steps), min_lr=1e-5, max_lr=0.5,
                                                   num_training=steps, early_stop_threshold=None)

    def raw_torch() -> None:  # the floor: the same steps in a bare PyTorch loop, no Lightning
        model = MLP()
        opt = model.configure_optimizers()
        batches = iter(data(steps))
        for _ in range(steps):
            x, y = next(batches)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    order = [("lr_range_test", ours), ("lr_find", theirs), ("raw_torch", raw_torch)]
    for name, fn in reversed(order) if swap else order:
        torch.manual_seed(0)
        wall, cpu = clocks()
        fn()
        out[name + "_s"] = time.perf_counter() - wall
        out[name + "_cpu_s"] = time.process_time() - cpu
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 steps, 3 repeats")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least noisy)")
    args = parser.parse_args()
    steps = args.steps or (50 if args.quick else 100)
    repeats = args.repeats or (3 if args.quick else 7)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    runs = []
    with tempfile.TemporaryDirectory() as root:
        measure(10, root, False)  # warm-up: imports, allocator, thread pools
        for i in range(repeats):
            runs.append(measure(steps, root, swap=bool(i % 2)))
            print(f"repeat {i + 1}/{repeats}: " + ", ".join(f"{k}={v:.3f}" for k, v in runs[-1].items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    ratio = {
        clock: (statistics.median(r[f"range_test{sfx}"] / r[f"plain_steps{sfx}"] for r in runs),
                statistics.median(r[f"lr_range_test{sfx}"] / r[f"lr_find{sfx}"] for r in runs))
        for clock, sfx in (("wall", "_s"), ("cpu", "_cpu_s"))
    }
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
          f" (load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, lightning {pl.__version__},"
          f" torch threads {torch.get_num_threads()}")
    print(f"num_steps={steps}, repeats={repeats}, medians:")
    for k, v in med.items():
        print(f"  {k:20s} {v:8.3f} s")
    for clock, (steps_ratio, finder_ratio) in ratio.items():
        print(f"  [{clock:4s}] range test / {steps} plain steps = {steps_ratio:.3f} (target <= 1.15);"
              f" lr_range_test / Tuner.lr_find = {finder_ratio:.3f} (target <= 0.7)")

if __name__ == "__main__":
    main()
