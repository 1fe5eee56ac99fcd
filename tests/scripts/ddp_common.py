"""Shared pieces of the standalone DDP scripts (run through ``subprocess`` by tests/callback/test_ddp.py).

Every rank writes one JSON file, ``rank{global_rank}.json``, from a hook: with ``ddp_spawn`` and
``ddp_fork`` only the parent returns from ``fit``, so nothing per-rank may live after ``fit()``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

DIM = 8
N_SAMPLES = 256

# Every Python-level collective of torch.distributed. DDP's gradient all-reduce runs in C++ (the
# Reducer) and is not seen here, which is what we want: it is the strategy's, not the callback's.
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all", "all_to_all_single",
    "barrier", "monitored_barrier", "broadcast", "broadcast_object_list", "gather", "gather_object", "reduce",
    "reduce_scatter", "reduce_scatter_tensor", "scatter", "scatter_object_list",
)


def regression_data(n: int = N_SAMPLES, dim: int = DIM, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class DDPModel(pl.LightningModule):
    """A tiny MLP regressor (SGD with momentum). ``nan_rank``/``nan_above_lr``: that rank's loss turns NaN
    once the optimizer's LR exceeds ``nan_above_lr`` (the other ranks stay finite)."""

    def __init__(self, batch_size: int = 8, lr: float = 0.01, nan_rank: int = -1, nan_above_lr: float = math.inf,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer = nn.Linear(DIM, 16)
        self.head = nn.Linear(16, 1)
        self.batch_size = batch_size
        self.lr = lr
        self.nan_rank = nan_rank
        self.nan_above_lr = nan_above_lr
        self.training_step_calls = 0
        self.local_losses: list[tuple[float, float]] = []  # (lr, this rank's loss) of every training_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.layer(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.training_step_calls += 1
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        if self.global_rank == self.nan_rank and lr > self.nan_above_lr:
            loss = loss * float("nan")
        self.local_losses.append((float(lr), float(loss.detach())))
        self.log("train_loss", loss)  # a real user's model logs; the range test must survive it
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        data = regression_data()
        if self.trainer.world_size > 1:
            # Lightning puts a DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED) on every train loader.
            return DataLoader(data, batch_size=self.batch_size, shuffle=True)
        # One rank: the same sampler with one replica, so it yields that sampler's permutation, and step k
        # of one rank with batch W*b sees exactly the samples of step k on W ranks with batch b each
        # (rank r takes every W-th index from r of the permutation). Lightning sets its epoch.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


class CollectiveCounter(Callback):
    """Counts the Python-level torch.distributed collectives this process issues, by window.

    Put it AFTER the CyclicLearningRate callback: its ``on_train_start`` then runs after the range test,
    and each ``on_train_batch_start``..``on_train_batch_end`` window holds the CLR's per-step hooks.
    """

    def __init__(self) -> None:
        self.total = 0
        self.by_name: dict[str, int] = {}
        self.setup_total: Optional[int] = None  # collectives from setup to the end of on_train_start
        self.train_by_name: dict[str, int] = {}
        self.per_step: list[int] = []
        self._train_start_total = 0
        self._train_start_by_name: dict[str, int] = {}
        self._batch_start = 0
        self._depth = 0  # nesting: broadcast_object_list calls broadcast, count it once
        self._installed = False

    def _wrap(self, name: str, fn: Any) -> Any:
        if getattr(fn, "_ddp_counter", False):
            return fn

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:  # count the outermost call only
                self.total += 1
                self.by_name[name] = self.by_name.get(name, 0) + 1
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1

        wrapper._ddp_counter = True  # type: ignore[attr-defined]
        return wrapper

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Runs in every rank's process (after spawn/fork too), before the strategy's first collective here.
        if self._installed:
            return
        for module in (dist, c10d):
            for name in COLLECTIVES:
                if hasattr(module, name):
                    setattr(module, name, self._wrap(name, getattr(module, name)))
        self._installed = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.setup_total = self.total
        self.setup_by_name = dict(self.by_name)
        self._train_start_total = self.total
        self._train_start_by_name = dict(self.by_name)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._batch_start = self.total

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.per_step.append(self.total - self._batch_start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_by_name = {
            k: v - self._train_start_by_name.get(k, 0)
            for k, v in self.by_name.items()
            if v - self._train_start_by_name.get(k, 0)
        }

    def report(self) -> dict[str, Any]:
        return {
            "before_training": self.setup_total,
            "before_training_by_name": getattr(self, "setup_by_name", {}),
            "training_total": sum(self.train_by_name.values()),
            "training_by_name": self.train_by_name,
            "per_step": self.per_step,
        }


def fingerprint(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
    """A hash of what a training step changes: parameters, gradients, buffers, optimizer state, the RNG
    states and the fit loop's counters (not the LR and momentum, which the CLR callback sets)."""
    h = hashlib.sha256()

    def add(t: Any) -> None:
        if t is None:
            h.update(b"None")
        else:
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())

    for p in pl_module.parameters():
        add(p)
        add(p.grad)
    for b in pl_module.buffers():
        add(b)
    for opt in trainer.optimizers:
        for state in opt.state.values():
            for k in sorted(state):
                h.update(k.encode())
                add(state[k]) if isinstance(state[k], torch.Tensor) else h.update(repr(state[k]).encode())
    add(torch.get_rng_state())
    h.update(repr(random.getstate()).encode())
    h.update(repr(np.random.get_state()[1].tolist()).encode())
    h.update(json.dumps(trainer.fit_loop.state_dict(), sort_keys=True, default=repr).encode())
    return h.hexdigest()


class Fingerprint(Callback):
    """Put BEFORE CyclicLearningRate: records the state's fingerprint at on_train_start, before the range test."""

    def __init__(self) -> None:
        self.before_range_test: Optional[str] = None
        self.training_step_calls: Optional[int] = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before_range_test = fingerprint(trainer, pl_module)
        self.training_step_calls = getattr(pl_module, "training_step_calls", None)


class RankReport(Callback):
    """Records per optimizer step the LR each rank steps with, and writes ``rank{r}.json`` at fit end."""

    def __init__(self, out_dir: str, counter: Optional[CollectiveCounter] = None,
                 before: Optional[Fingerprint] = None) -> None:
        self.out_dir = out_dir
        self.counter = counter
        self.before = before
        self.after_range_test: Optional[str] = None
        self.sweep_steps: Optional[int] = None
        self.lrs: list[float] = []
        self.momenta: list[float] = []
        self.global_steps: list[int] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after_range_test = fingerprint(trainer, pl_module)
        if self.before is not None and self.before.training_step_calls is not None:
            self.sweep_steps = pl_module.training_step_calls - self.before.training_step_calls

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        group = optimizer.param_groups[0]
        self.lrs.append(float(group["lr"]))
        self.momenta.append(float(group.get("momentum", float("nan"))))
        self.global_steps.append(trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clr = next((c for c in trainer.callbacks if type(c).__name__ == "CyclicLearningRate"), None)
        report: dict[str, Any] = {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "pid": os.getpid(),
            "strategy": type(trainer.strategy).__name__,
            "cluster_environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            "launcher": type(trainer.strategy.launcher).__name__ if trainer.strategy.launcher else None,
            "num_training_batches": trainer.num_training_batches,
            "global_step": trainer.global_step,
            "lrs": self.lrs,
            "momenta": self.momenta,
            "global_steps": self.global_steps,
            "weights": {k: v.detach().cpu().flatten().tolist() for k, v in pl_module.state_dict().items()},
            "training_step_calls": getattr(pl_module, "training_step_calls", None),
            "local_losses": getattr(pl_module, "local_losses", None),
            "fingerprint_before_range_test": self.before.before_range_test if self.before else None,
            "fingerprint_after_range_test": self.after_range_test,
            "sweep_training_steps": self.sweep_steps,
        }
        if clr is not None:
            result = clr.range_test_result
            report.update(
                base_lr=clr.base_lr,
                max_lr=clr.max_lr,
                step_size_up=clr.step_size_up,
                step_size_down=clr.step_size_down,
                steps_per_epoch=clr.steps_per_epoch,
                clr_steps=clr.steps,
                range_test=_range_test_dict(result) if result is not None else None,
            )
        if self.counter is not None:
            report["collectives"] = self.counter.report()
        write_json(self.out_dir, trainer.global_rank, report)


def _range_test_dict(result: Any) -> dict[str, Any]:
    keys = ("lrs", "losses", "smoothed_losses", "base_lr", "max_lr", "rule", "stopped_early", "stop_reason", "fallback",
            "message")
    out = {k: getattr(result, k, None) for k in keys}
    for k in ("lrs", "losses", "smoothed_losses"):
        if out[k] is not None:
            out[k] = [float(v) for v in out[k]]
    return out


def write_json(out_dir: str, rank: int, report: dict[str, Any]) -> None:
    path = Path(out_dir) / f"rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    # NaN/inf are written as JSON's non-standard tokens, which Python's json reads back.
    tmp.write_text(json.dumps(report))
    tmp.replace(path)


def rank_from_env() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def run_rank(out: str, body: Callable[[], None], details: Callable[[], dict[str, Any]] = dict) -> int:
    """One rank of a DDP test script: ``body()``, then 0; if it raises, a JSON report of the error (with
    ``details()``) in ``out`` and 3. The gloo group is destroyed either way: Lightning destroys NCCL groups only,
    and a gloo group left alive at interpreter exit sometimes aborts a finished rank (SIGABRT, "terminate called
    without an active exception"; torch 2.13)."""
    try:
        body()
    except Exception as err:  # noqa: BLE001 - reported to the test, which asserts on it
        rank = rank_from_env()
        write_json(out, rank, {"global_rank": rank, "error_type": type(err).__name__, "error": str(err),
                               "traceback": traceback.format_exc(), **details()})
        return 3
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
