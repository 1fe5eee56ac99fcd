"""run_range_test's entry points: the standalone lr_range_test, the files the callback saves, resume,
fast_dev_run and given bounds."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyModel, loader, trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from range_test_helpers import BatchRecorder, assert_same, cfg
from torch.utils.data import DataLoader

from lightning_clr import CyclicLearningRate, RangeTestResult, lr_range_test


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
    with open(f"{log_dir}/lr_range_test.json", encoding="utf-8") as f:
        json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
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
    assert not (tmp_path / "lr_range_test.json").exists()
    assert clr2.range_test_result.to_dict() == clr1.range_test_result.to_dict()  # the checkpoint's, not a new one
    assert (clr2.base_lr, clr2.max_lr) == (clr1.base_lr, clr1.max_lr)
    assert at_start.global_step == 6 and tr2.global_step > 6  # resumed, not restarted at step 0
    saved = torch.load(ckpt, weights_only=False)
    assert_same(saved["optimizer_states"][0]["state"], at_start.optimizer["state"])
    assert clr2.state_dict()["plan"]["range_test"] == clr1.range_test_result.to_dict()


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
        # max_lr x (found base / max_lr): equal to the found base up to rounding (the weights' draw, so the found
        # bounds, depend on the tests run before this one in its worker)
        assert clr.base_lr == pytest.approx(r.base_lr if r.base_lr <= 0.05 else 0.05 / 4, rel=1e-12)
    else:
        assert r is not None and clr.base_lr == 1e-6 and clr.max_lr == pytest.approx(r.max_lr, rel=1e-12)


def test_lr_range_test_without_training_batches_says_so() -> None:
    with pytest.raises(RuntimeError, match="did not run.*limit_train_batches=0"):
        lr_range_test(trainer(limit_train_batches=0), TinyModel(), train_dataloaders=loader(), config=cfg())

