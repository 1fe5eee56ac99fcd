"""Shared by the range-test tests: the full state the range test must restore, a callback that runs the test
from a hook of a real fit, and small models and settings."""

from __future__ import annotations

import copy
import math
import random
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from helpers import TinyModel
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_clr import RangeTestConfig, RangeTestResult
from lightning_clr.range_test import run_range_test


def full_state(tr: pl.Trainer, model: pl.LightningModule) -> dict[str, Any]:
    """Everything the range test must leave bitwise unchanged, captured independently of the library."""
    opt = tr.optimizers[0]
    scaler = getattr(tr.precision_plugin, "scaler", None)
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "optimizer": copy.deepcopy(opt.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "fit_loop": copy.deepcopy(tr.fit_loop.state_dict()),
        "global_step": tr.global_step,
        "epoch": tr.current_epoch,
        "scaler": None if scaler is None else copy.deepcopy({k: v for k, v in vars(scaler).items()}),
        "callbacks": list(tr.callbacks),
        "log": (type(model).log, "log" in vars(model), "log_dict" in vars(model)),
    }


def assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num()), path
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


class Probe(Callback):
    """Runs the range test from a hook of a real fit and records the state around it."""

    def __init__(self, config: RangeTestConfig, hook: str = "on_train_start", at_batch: int = 0) -> None:
        self.config, self.hook, self.at_batch = config, hook, at_batch
        self.result: Optional[RangeTestResult] = None
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.error: Optional[BaseException] = None

    def _run(self, tr: pl.Trainer, model: pl.LightningModule) -> None:
        self.before = full_state(tr, model)
        try:
            self.result = run_range_test(tr, model, self.config)
        except ValueError as err:
            self.error = err
        self.after = full_state(tr, model)

    def on_train_start(self, tr: pl.Trainer, model: pl.LightningModule) -> None:
        if self.hook == "on_train_start":
            self._run(tr, model)

    def on_train_batch_start(self, tr: pl.Trainer, model: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.hook == "on_train_batch_start" and batch_idx == self.at_batch and tr.current_epoch == 0:
            self._run(tr, model)


class BatchRecorder(Callback):
    """Records the real training batches (callback hooks do not fire during the sweep)."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.hook_calls = 0

    def on_train_batch_start(self, tr: pl.Trainer, model: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.batches.append(batch[0].clone())

    def on_before_backward(self, *args: Any) -> None:
        self.hook_calls += 1

    def on_before_optimizer_step(self, *args: Any) -> None:
        self.hook_calls += 1


class DropoutModel(TinyModel):
    """Consumes the torch RNG in every training step (dropout), so RNG restore matters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.layer(x))))


def cfg(**kwargs: Any) -> RangeTestConfig:
    kwargs.setdefault("num_steps", 20)
    kwargs.setdefault("min_lr", 1e-5)
    kwargs.setdefault("max_lr", 1.0)
    kwargs.setdefault("save", False)
    return RangeTestConfig(**kwargs)
