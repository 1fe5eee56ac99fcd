"""The sweep with a real Trainer: exact restore, stopping, the fit's machinery (AMP, accumulation, clipping),
manual optimization, skipped batches, param groups, cycled data, the metric curve, the progress bar."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyModel, loader, trainer
from lightning.pytorch.callbacks import Callback
from range_test_helpers import BatchRecorder, DropoutModel, Probe, assert_same, cfg
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_clr import CyclicLearningRate, RangeTestResult
from lightning_clr.range_test._rules import suggest


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


# ---------------------------------------------------------------- data, metric, progress bar
def test_short_dataloader_is_cycled_with_one_info_line_and_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe(cfg(num_steps=10, max_lr=1e-2))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        trainer(callbacks=[probe], max_steps=1).fit(TinyModel(), loader(n=16, batch_size=8))
    assert probe.result is not None and len(probe.result.losses) == 10
    lines = [r for r in caplog.records if "cycled" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "cycled 4 time" in lines[0].getMessage()
    assert not [w for w in caught if "cycled" in str(w.message)]


# ---------------------------------------------------------------- param groups keep their ratios
class GroupModel(TinyModel):
    """SGD with a backbone group and a head group at their own LRs; records each group's LR per optimizer step."""

    def __init__(self, lrs: tuple[float, float], flat: bool = False) -> None:
        super().__init__()
        self.group_lrs, self.flat = lrs, flat
        self.seen: list[list[float]] = []
        self.calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.calls += 1
        if self.flat:  # a loss that does not depend on the LR: the rules fall back
            return (self.layer.weight * 0).sum() + (self.head.weight * 0).sum() + 1.0
        return super().training_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.seen.append([g["lr"] for g in optimizer.param_groups])

    def configure_optimizers(self) -> Any:
        backbone, head = self.group_lrs
        return torch.optim.SGD([{"params": self.layer.parameters(), "lr": backbone},
                                {"params": self.head.parameters(), "lr": head}], lr=0.5, momentum=0.9)


@pytest.mark.parametrize("lrs", [(1e-4, 1e-3), (3e-2, 2e-3)])
def test_param_groups_keep_their_configured_ratios(lrs: tuple[float, float]) -> None:
    model = GroupModel(lrs)
    probe = Probe(cfg(num_steps=20, min_lr=1e-4, max_lr=1.0))
    trainer(callbacks=[probe], max_steps=1).fit(model, loader(n=256, batch_size=32))
    r = probe.result
    assert probe.error is None and r is not None and r.group_lrs == list(lrs)
    ref = 0 if lrs[0] > lrs[1] else 1
    assert r.reference_group == ref
    sweep = model.seen[: len(r.lrs)]
    assert [step[ref] for step in sweep] == r.lrs  # the curve's LRs are the reference group's, exactly
    for step in sweep:
        assert step[1 - ref] / step[ref] == pytest.approx(lrs[1 - ref] / lrs[ref], rel=1e-12)
    assert model.seen[len(r.lrs)] == list(lrs)  # the real step after the sweep: the configured LRs are back
    base, high = r.group_bounds()
    assert (base[ref], high[ref]) == (r.base_lr, r.max_lr)
    assert high[1 - ref] / high[ref] == pytest.approx(lrs[1 - ref] / lrs[ref], rel=1e-12)
    assert base[1 - ref] / base[ref] == pytest.approx(lrs[1 - ref] / lrs[ref], rel=1e-12)
    assert_same(probe.before, probe.after)


def test_fallback_is_the_reference_groups_lr() -> None:
    probe = Probe(cfg(num_steps=10, max_lr=1e-2))
    reason = r"cannot read the bounds, falling back to max_lr=0.002 \(the optimizer's LR\)"
    with pytest.warns(UserWarning, match=reason):
        trainer(callbacks=[probe], max_steps=1).fit(GroupModel((1e-4, 2e-3), flat=True), loader())
    r = probe.result
    assert r is not None and r.fallback and r.max_lr == 2e-3 and r.base_lr == 2e-3 / 4
    assert r.group_bounds() == ([1e-4 / 2e-3 * 2e-3 / 4, 2e-3 / 4], [1e-4 / 2e-3 * 2e-3, 2e-3])


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf")])
def test_a_group_lr_that_cannot_be_scaled_is_refused_naming_the_group_before_any_step(bad: float) -> None:
    model = GroupModel((1e-3, bad))
    probe = Probe(cfg(num_steps=10))
    trainer(callbacks=[probe], max_steps=1).fit(model, loader())
    assert isinstance(probe.error, ValueError)
    assert f"`SGD.param_groups[1]['lr']` must be a finite number > 0 for the LR range test, got {bad!r}" in str(
        probe.error
    )
    assert model.calls == 1  # only the real training step ran; the sweep refused before its first
    assert_same(probe.before, probe.after)


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


def test_the_optimizers_step_hooks_do_not_see_the_sweep() -> None:
    """A hook on the optimizer's steps (a weight average, a CyclicLearningRate counting its steps) sees the real
    steps only: the sweep's 20 steps run with the optimizer's step hooks set aside, and they are back after it."""
    seen: list[int] = []

    def count(opt: Any, args: Any, kwargs: Any) -> None:
        seen.append(tr.global_step)

    class CountSteps(Callback):
        def on_train_start(self, tr: pl.Trainer, model: pl.LightningModule) -> None:
            tr.optimizers[0].register_step_post_hook(count)

    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3)
    probe = Probe(cfg(num_steps=20), hook="on_train_batch_start", at_batch=2)
    tr = trainer(callbacks=[CountSteps(), clr, probe], max_epochs=1)
    tr.fit(TinyModel(), loader())  # 8 batches
    assert probe.error is None and len(probe.result.lrs) == 20  # the sweep took its 20 steps mid-fit ...
    assert seen == list(range(8))  # ... and the user's step hook saw the 8 real steps alone
    assert clr.steps == [8]  # the schedule counted them alone, so it ends where a fit without the sweep ends
    assert list(tr.optimizers[0]._optimizer_step_post_hooks.values()) == [count]  # the callback's own is gone
