"""The LR range test with a real Trainer: exact restore, stopping, rules end to end, metric, AMP,
accumulation and clipping, manual optimization, the standalone function, the callback's files, resume."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import TinyModel, loader, trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_clr import CyclicLearningRate, RangeTestConfig, RangeTestResult, lr_range_test
from lightning_clr.range_test._rules import suggest
from lightning_clr.range_test import run_range_test


# ---------------------------------------------------------------- helpers
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


# ---------------------------------------------------------------- exact restore
def test_restore_is_bitwise_after_real_adam_steps() -> None:
    """Mid-epoch, with Adam state from 3 real steps: every piece of state comes back bitwise."""
    torch.manual_seed(0)
    model = TinyModel(optimizer="adam", lr=0.01)
    probe = Probe(cfg(), hook="on_train_batch_start", at_batch=3)
    trainer(callbacks=[probe], max_epochs=1).fit(model, loader(shuffle=True))
    assert probe.error is None and probe.result is not None
    assert probe.before["optimizer"]["state"], "Adam must have state before the test"
    assert probe.before["global_step"] == 3
    assert_same(probe.before, probe.after)
    assert len(set(probe.result.losses)) > 1  # the sweep really trained


def test_fit_with_range_test_equals_fit_without() -> None:
    """Same data order in epoch 0, same dropout draws, same final weights as a fit without the test."""
    runs = []
    for with_test in (True, False):
        torch.manual_seed(1)
        model = DropoutModel(optimizer="sgd", lr=0.05, momentum=0.9)
        recorder = BatchRecorder()
        callbacks: list[Callback] = [recorder]
        if with_test:
            callbacks.insert(0, Probe(cfg(num_steps=30)))
        tr = trainer(callbacks=callbacks, max_epochs=2)
        tr.fit(model, loader(shuffle=True))  # TinyModel calls self.log in training_step
        runs.append((model, recorder, tr))
    (m1, r1, t1), (m2, r2, t2) = runs
    assert r1.hook_calls == r2.hook_calls == 2 * 16  # no callback hook fired during the sweep
    assert len(r1.batches) == len(r2.batches) == 16
    for a, b in zip(r1.batches, r2.batches):
        assert torch.equal(a, b)
    assert t1.global_step == t2.global_step == 16
    assert_same(m1.state_dict(), m2.state_dict())


def test_nan_loss_above_some_lr_stops_and_restores_finite_weights() -> None:
    nan_lr = 0.05

    class NanAboveLR(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            if self.trainer.optimizers[0].param_groups[0]["lr"] > nan_lr:
                loss = loss * float("nan")
            return loss

    torch.manual_seed(0)
    model = NanAboveLR(lr=0.01)
    probe = Probe(cfg(num_steps=40, min_lr=1e-4, max_lr=10.0, divergence_threshold=1e6))
    trainer(callbacks=[probe], max_steps=2).fit(model, loader(n=256, batch_size=32))
    result = probe.result
    assert result is not None and result.stopped_early and "nan" in (result.stop_reason or "")
    assert math.isnan(result.losses[-1]) and result.lrs[-1] > nan_lr >= result.lrs[-2]
    assert_same(probe.before["params"], probe.after["params"])
    assert all(torch.isfinite(v).all() for v in probe.after["params"].values())
    assert 0 < result.base_lr < result.max_lr < nan_lr
    assert all(0 < b < m < nan_lr for b, m in result.suggestions.values())
    again = RangeTestResult.from_json(result.to_json())
    assert again.to_dict() == result.to_dict() and math.isnan(again.losses[-1])


def test_divergence_stops_the_sweep_and_bounds_lie_below_it() -> None:
    torch.manual_seed(0)
    model = TinyModel(optimizer="sgd", lr=0.01)
    probe = Probe(cfg(num_steps=60, min_lr=1e-4, max_lr=100.0))
    trainer(callbacks=[probe], max_steps=1).fit(model, loader(n=256, batch_size=32))
    r = probe.result
    assert r is not None and r.stopped_early and "exceeded 4 x the best" in (r.stop_reason or "")
    assert len(r.lrs) < 60
    best = min(r.smoothed_losses[:-1])
    assert r.smoothed_losses[-1] > 4 * best and all(s <= 4 * best for s in r.smoothed_losses[:-1])
    assert r.max_lr < r.lrs[-1] / 3
    assert_same(probe.before, probe.after)


# ---------------------------------------------------------------- the fit's machinery applies
class CountingModel(TinyModel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = self.clips = self.opt_steps = 0
        self.autocast: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return super().training_step(batch, batch_idx)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        self.clips += 1
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.opt_steps += 1


def test_accumulation_clipping_and_grad_scaler_apply_and_are_restored() -> None:
    model = CountingModel(lr=0.01)
    probe = Probe(cfg(num_steps=10))
    tr = trainer(
        callbacks=[probe], max_steps=1, accumulate_grad_batches=2, gradient_clip_val=0.5,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))],
    )
    model.steps = model.clips = 0
    tr.fit(model, loader())
    # sweep: 10 optimizer steps of 2 batches each; then 1 real optimizer step of 2 batches
    assert model.steps == 20 + 2 and model.opt_steps == 10 + 1 and model.clips == 10 + 1
    assert all(model.autocast)
    assert probe.result is not None and len(probe.result.lrs) == 10
    assert_same(probe.before, probe.after)  # includes the GradScaler (lazily created: back to None)


# ---------------------------------------------------------------- manual optimization
class ManualModel(TinyModel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.seen_lrs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss)
        self.seen_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        self.log("train_loss", loss)
        return loss


def test_manual_optimization_each_training_step_is_one_sweep_step() -> None:
    model = ManualModel(optimizer="adam", lr=0.01)
    probe = Probe(cfg(num_steps=12, max_lr=0.1))
    tr = trainer(callbacks=[probe], max_epochs=1)
    tr.fit(model, loader())
    r = probe.result
    assert r is not None and len(r.lrs) == 12
    assert model.seen_lrs[:12] == r.lrs  # the user's own opt.step() used the sweep's LR
    assert model.seen_lrs[12:] == [0.01] * 8
    assert_same(probe.before, probe.after)
    assert tr.global_step == 8  # the sweep's steps were not counted


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(min_lr=1.0, max_lr=0.1), r"`min_lr` \(1.0\) must be < `max_lr` \(0.1\)"),
        (dict(min_lr=0.0), r"`min_lr` must be a finite number > 0, got 0.0"),
        (dict(max_lr=float("nan")), r"`max_lr` must be a finite number > 0, got nan"),
        (dict(num_steps=5), r"`num_steps` must be an int >= 10, got 5"),
        (dict(rule="best"), r"`rule` must be one of .*got 'best'"),
        (dict(mode="cosine"), r"`mode` must be .*got 'cosine'"),
        (dict(smoothing=0.0), r"`smoothing` must be in \(0, 1\], got 0.0"),
        (dict(divergence_threshold=1.0), r"`divergence_threshold` must be .*got 1.0"),
        (dict(base_divisor=0.5), r"`base_divisor` must be .*got 0.5"),
        (dict(metric="accuracy"), r"`metric` must be a torchmetrics Metric, got 'accuracy'"),
        (dict(metric=MeanMetric()), r"`metric` MeanMetric does not say whether higher is better"),
    ],
)
def test_bad_config_is_refused_naming_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RangeTestConfig(**kwargs)


@pytest.mark.parametrize("returns, match", [(None, "returned None"), ({"out": 1}, "without a scalar 'loss'")])
def test_training_step_without_loss_is_refused_and_state_restored(returns: Any, match: str) -> None:
    class NoLoss(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            in_sweep = self.trainer.fit_loop.epoch_loop.batch_progress.total.ready == 0  # before any real batch
            return returns if in_sweep else loss

    model = NoLoss()
    probe = Probe(cfg())
    trainer(callbacks=[probe], max_steps=1).fit(model, loader())
    assert isinstance(probe.error, ValueError) and match in str(probe.error)
    assert_same(probe.before, probe.after)


def test_range_test_outside_a_fit_is_refused() -> None:
    model = TinyModel()
    tr = trainer()
    model.trainer = tr
    with pytest.raises(ValueError, match="exactly one optimizer|running fit"):
        run_range_test(tr, model, cfg())


def test_sharded_strategy_is_refused_by_name() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_clr.range_test import refuse_sharded

    with pytest.raises(ValueError, match="FSDPStrategy"):
        refuse_sharded(FSDPStrategy())


# ---------------------------------------------------------------- data, metric, progress bar
def test_short_dataloader_is_cycled_with_a_warning() -> None:
    probe = Probe(cfg(num_steps=10, max_lr=1e-2))
    with pytest.warns(UserWarning, match="cycled 4 time"):
        trainer(callbacks=[probe], max_steps=1).fit(TinyModel(), loader(n=16, batch_size=8))
    assert probe.result is not None and len(probe.result.losses) == 10


class Classifier(pl.LightningModule):
    def __init__(self, return_dict: bool) -> None:
        super().__init__()
        self.return_dict = return_dict
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return {"loss": loss, "preds": logits, "target": y} if self.return_dict else loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def classification_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DataLoader(TensorDataset(x, y), batch_size=32)


@pytest.mark.parametrize("return_dict", [True, False])
def test_metric_curve_is_recorded_and_the_bounds_are_read_off_it(return_dict: bool) -> None:
    probe = Probe(cfg(num_steps=30, min_lr=1e-3, max_lr=30.0, metric=MulticlassAccuracy(num_classes=3)))
    trainer(callbacks=[probe], max_steps=1).fit(Classifier(return_dict), classification_loader())
    r = probe.result
    assert r is not None and r.metric_name == "MulticlassAccuracy"
    assert len(r.metric_values) == len(r.lrs) and all(0 <= v <= 1 for v in r.metric_values)
    assert max(r.metric_values) > min(r.metric_values)
    expected = suggest(r.lrs, [-v for v in r.smoothed_metric], "smith", fallback_max_lr=0.01,
                       diverged_at=r.lrs[-1] if r.stopped_early else None)
    assert (r.base_lr, r.max_lr) == (expected.base_lr, expected.max_lr)
    assert_same(probe.before, probe.after)


@pytest.mark.parametrize("show", [True, False])
def test_progress_bar_follows_the_trainer_and_config(show: bool, capsys: pytest.CaptureFixture[str]) -> None:
    probe = Probe(cfg(num_steps=10, max_lr=1e-2, progress_bar=show))
    trainer(callbacks=[probe], max_steps=1, enable_progress_bar=True).fit(TinyModel(), loader())
    assert ("LR range test" in capsys.readouterr().err) is show


# ---------------------------------------------------------------- result: JSON and plot
def test_result_round_trips_through_json_and_plots_both_bounds(tmp_path: Any) -> None:
    r = RangeTestResult(lrs=[1e-4, 1e-3, 1e-2, 1e-1], losses=[1.0, 0.5, 0.3, float("inf")],
                        smoothed_losses=[1.0, 0.7, 0.5, float("nan")], base_lr=2.5e-4, max_lr=1e-3,
                        rule="smith", stopped_early=True, stop_reason="nan")
    path = str(tmp_path / "r.json")
    r.to_json(path)
    json.loads(open(path).read())  # strict JSON
    again = RangeTestResult.from_json(path)
    assert again.to_dict() == r.to_dict() and again.losses[-1] == float("inf")
    fig = r.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    vertical = {line.get_xdata()[0] for line in ax.get_lines() if len(set(line.get_xdata())) == 1}
    assert vertical == {2.5e-4, 1e-3}


# ---------------------------------------------------------------- standalone function
class DataModule(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return loader(shuffle=True)


def test_standalone_lr_range_test_leaves_model_and_trainer_usable() -> None:
    torch.manual_seed(0)
    model = TinyModel(optimizer="adam")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = BatchRecorder()
    tr = trainer(callbacks=[recorder], max_epochs=2)
    result = lr_range_test(tr, model, datamodule=DataModule(), config=cfg(num_steps=20))
    assert len(result.lrs) >= 10 and 0 < result.base_lr < result.max_lr
    assert_same(before, dict(model.state_dict()))
    assert tr.callbacks[-1] is recorder and tr.num_sanity_val_steps == 2 and not tr.should_stop
    assert recorder.batches == [] and tr.global_step == 0
    tr.fit(model, loader())
    assert tr.global_step == 16 and len(recorder.batches) == 16
    result2 = lr_range_test(trainer(), TinyModel(), train_dataloaders=loader(), config=cfg(num_steps=10))
    assert len(result2.lrs) == 10


def test_standalone_lr_range_test_does_not_train_under_min_epochs_or_min_steps() -> None:
    # Lightning ignores `should_stop` until min_epochs/min_steps are met; the private fit must still not train.
    torch.manual_seed(0)
    model = TinyModel(optimizer="adam")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = trainer(min_epochs=1, min_steps=5, max_epochs=2)
    lr_range_test(tr, model, train_dataloaders=loader(), config=cfg(num_steps=10))
    assert tr.global_step == 0
    assert_same(before, dict(model.state_dict()))
    assert (tr.fit_loop.min_epochs, tr.fit_loop.epoch_loop.min_steps) == (1, 5)  # the user's limits are back


# ---------------------------------------------------------------- with the callback
def test_callback_saves_png_json_and_logs_the_figure(tmp_path: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    clr = CyclicLearningRate(range_test=cfg(num_steps=20, save=True))
    tr = trainer(callbacks=[clr], max_steps=2, logger=TensorBoardLogger(str(tmp_path)), default_root_dir=str(tmp_path))
    tr.fit(TinyModel(), loader())
    log_dir = tr.log_dir
    assert clr.range_test_result is not None
    saved = RangeTestResult.from_json(f"{log_dir}/lr_range_test.json")
    assert saved.to_dict() == clr.range_test_result.to_dict()
    with open(f"{log_dir}/lr_range_test.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "lr_range_test" in events.Tags()["images"]


def test_callback_without_logger_writes_to_default_root_dir(tmp_path: Any) -> None:
    clr = CyclicLearningRate(range_test=cfg(num_steps=10, save=True))
    trainer(callbacks=[clr], max_steps=1, default_root_dir=str(tmp_path)).fit(TinyModel(), loader())
    assert (tmp_path / "lr_range_test.json").is_file() and (tmp_path / "lr_range_test.png").is_file()


class StateAtStart(Callback):
    def on_train_start(self, tr: pl.Trainer, model: pl.LightningModule) -> None:
        self.global_step = tr.global_step
        self.optimizer = copy.deepcopy(tr.optimizers[0].state_dict())


def test_resumed_fit_does_not_rerun_the_test_and_keeps_adam_state(tmp_path: Any) -> None:
    torch.manual_seed(0)
    clr1 = CyclicLearningRate(range_test=cfg(num_steps=20))
    tr1 = trainer(callbacks=[clr1], max_steps=6)
    tr1.fit(TinyModel(optimizer="adam"), loader())
    ckpt = str(tmp_path / "a.ckpt")
    tr1.save_checkpoint(ckpt)
    assert clr1.range_test_result is not None

    clr2, at_start = CyclicLearningRate(), StateAtStart()  # default config: would run 100 steps
    tr2 = trainer(callbacks=[clr2, at_start], max_epochs=3, default_root_dir=str(tmp_path))
    tr2.fit(TinyModel(optimizer="adam"), loader(), ckpt_path=ckpt)
    assert clr2.range_test_result is None and not (tmp_path / "lr_range_test.json").exists()
    assert (clr2.base_lr, clr2.max_lr) == (clr1.base_lr, clr1.max_lr)
    assert at_start.global_step == 6 and tr2.global_step > 6  # resumed, not restarted at step 0
    saved = torch.load(ckpt, weights_only=False)
    assert_same(saved["optimizer_states"][0]["state"], at_start.optimizer["state"])
    assert clr2.state_dict()["range_test"] == clr1.range_test_result.to_dict()


def test_fast_dev_run_skips_the_test_with_fallback_bounds(caplog: pytest.LogCaptureFixture) -> None:
    clr = CyclicLearningRate()
    with caplog.at_level(logging.INFO):
        trainer(callbacks=[clr], fast_dev_run=True).fit(TinyModel(lr=0.02), loader())
    assert clr.range_test_result is None
    assert (clr.base_lr, clr.max_lr) == (0.005, 0.02)
    assert "fast_dev_run" in caplog.text and "skips the range test" in caplog.text


@pytest.mark.parametrize("given", ["both", "max_lr", "base_lr"])
def test_given_bounds_skip_the_test_or_fix_that_bound_only(given: str) -> None:
    kwargs = {"both": dict(base_lr=1e-3, max_lr=5e-3), "max_lr": dict(max_lr=0.05),
              "base_lr": dict(base_lr=1e-6)}[given]
    clr = CyclicLearningRate(range_test=cfg(num_steps=20), **kwargs)
    trainer(callbacks=[clr], max_steps=1).fit(TinyModel(), loader(n=256, batch_size=32))
    r = clr.range_test_result
    if given == "both":
        assert r is None and (clr.base_lr, clr.max_lr) == (1e-3, 5e-3)
    elif given == "max_lr":
        assert r is not None and clr.max_lr == 0.05
        assert clr.base_lr == (r.base_lr if r.base_lr <= 0.05 else 0.05 / 4)
    else:
        assert r is not None and clr.base_lr == 1e-6 and clr.max_lr == r.max_lr


# ---------------------------------------------------------------- the snapshot on its own
def test_snapshot_removes_added_keys_and_state_and_restores_metrics_scaler_generators() -> None:
    from lightning_clr.range_test._snapshot import Snapshot

    model = nn.Module()
    model.lin = nn.Linear(4, 2)
    model.acc = MulticlassAccuracy(num_classes=2)  # a metric inside the model: its state is not a buffer
    model.acc.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)  # no state yet
    scaler = torch.amp.GradScaler("cpu")
    gen = torch.Generator().manual_seed(3)
    before_opt = copy.deepcopy(opt.state_dict())
    before_params = copy.deepcopy(model.state_dict())
    before_acc = model.acc.compute().clone()
    weight = model.lin.weight
    snap = Snapshot.capture(model, [opt], scaler=scaler, generators=[gen])

    model.lin(torch.randn(3, 4)).sum().backward()
    opt.param_groups[0]["initial_lr"] = 1e-7  # what a scheduler would leave behind
    opt.param_groups[0]["lr"] = 5.0
    opt.step()
    scaler.scale(torch.ones(()))  # creates the lazy scale tensor
    model.acc.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    torch.randn(5, generator=gen)
    model.eval()

    snap.restore()
    assert "initial_lr" not in opt.param_groups[0] and not opt.state
    assert_same(before_opt, opt.state_dict())
    assert_same(before_params, dict(model.state_dict()))
    assert model.lin.weight is weight and weight.grad is None and model.training
    assert scaler._scale is None
    assert torch.equal(model.acc.compute(), before_acc)
    assert torch.equal(torch.randn(5, generator=gen), torch.randn(5, generator=torch.Generator().manual_seed(3)))


def test_lr_range_test_without_training_batches_says_so() -> None:
    with pytest.raises(RuntimeError, match="did not run.*limit_train_batches=0"):
        lr_range_test(trainer(limit_train_batches=0), TinyModel(), train_dataloaders=loader(), config=cfg())
