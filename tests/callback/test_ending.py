"""Runs end where the startup line says (issue 20), through a real Trainer.

1. torch's ``CyclicLR`` arguments give torch's schedule, step for step, over a whole run;
2. an explicit step size that does not fill the run: the startup line says where it ends and at what LR, and an
   annealing tail (when asked for) still ends the run at ``base_lr * final_lr_ratio``;
3. the callback added to a resumed run (a real checkpoint file without its state) plans from the resumed step and
   does not sweep trained weights unless asked;
4. a two-optimizer module in manual optimization whose generator steps every second batch: each optimizer ends at
   its own cycle end.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import LRRecorder, StopAt, TinyModel, loader, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_clr import CyclicLearningRate, RangeTestConfig, cyclic_lr
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO

SEED = dict(base_lr=0.001, max_lr=0.006, step_size_up=2000, mode="triangular")  # the seed's own example


def torch_trace(n_steps: int, **kwargs: Any) -> tuple[list[float], float]:
    """torch's ``CyclicLR`` (cycle_momentum=False): the LR of each of ``n_steps`` steps, and the LR after them."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CyclicLR(opt, cycle_momentum=False, **kwargs)
    out = []
    for _ in range(n_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out, opt.param_groups[0]["lr"]


def last_lrs(t: pl.Trainer) -> list[float]:
    return [opt.param_groups[0]["lr"] for opt in t.optimizers]


def startup_line(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CyclicLearningRate: base_lr=")]
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------ 1. torch's arguments, torch's schedule
@pytest.mark.parametrize("steps", [3000, 4000])  # mid-cycle (in the falling half), and at the first cycle end
def test_the_seeds_torch_arguments_give_torch_cycliclr_step_for_step(steps):
    rec = LRRecorder()
    clr = CyclicLearningRate(**SEED)
    t = trainer(callbacks=[clr, rec], max_steps=steps, max_epochs=-1)
    t.fit(TinyModel(log_loss=False), loader(n=4096, batch_size=1))  # one epoch: epoch ends cost more than steps
    expected, after = torch_trace(steps, **SEED)
    assert clr.plan.final_lr_ratio == 1.0
    assert [lrs[0] for lrs in rec.lrs] == expected  # bitwise, every step of the whole run
    assert last_lrs(t) == [after]


def test_an_explicit_final_lr_ratio_applies_to_given_bounds():
    rec = LRRecorder()
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=4)
    clr = CyclicLearningRate(final_lr_ratio=DEFAULT_FINAL_LR_RATIO, **kwargs)  # equal to the automatic value
    t = trainer(callbacks=[clr, rec], max_epochs=2)
    t.fit(TinyModel(), loader(n=64, batch_size=8))  # 16 steps: 2 cycles
    assert clr.plan.final_lr_ratio == DEFAULT_FINAL_LR_RATIO
    assert last_lrs(t) == [pytest.approx(0.001)]


# ------------------------------------------------------------------ 2. a step size that does not fill the run
def test_a_step_size_that_does_not_fill_the_run_says_where_it_ends(caplog):
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=48)
    t = trainer(callbacks=[clr], max_epochs=16)
    with caplog.at_level(logging.INFO):
        t.fit(TinyModel(), loader(n=64, batch_size=8))  # 128 steps: cycles of 96 end at 96 and 192
    line = startup_line(caplog)
    assert "annealing" not in line  # no tail is announced: none happens
    end = last_lrs(t)[0]
    assert end == pytest.approx(0.01 + 0.09 * 32 / 48)
    assert f"ending mid-cycle: after the run's 128 optimizer steps the LR is {end:.4g}, not base_lr" in line
    assert "end at steps 96 and 192" in line


def test_a_tail_asked_for_ends_a_mid_cycle_run_at_its_ratio(caplog):
    rec = LRRecorder()
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=48)
    clr = CyclicLearningRate(final_lr_ratio=0.1, **kwargs)
    t = trainer(callbacks=[clr, rec], max_epochs=16)
    with caplog.at_level(logging.INFO):
        t.fit(TinyModel(), loader(n=64, batch_size=8))
    line = startup_line(caplog)
    assert "annealing to base_lr x 0.1 at the end (steps 80-128" in line
    lrs = [row[0] for row in rec.lrs]
    assert lrs[:81] == [cyclic_lr(k, **kwargs) for k in range(81)]  # torch's until the tail's first step
    assert lrs[80:] == sorted(lrs[80:], reverse=True)  # then down, all the way
    assert last_lrs(t) == [pytest.approx(0.001)]  # the run's end, as announced


def test_a_run_that_ends_at_a_cycle_end_says_so(caplog):
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=32)
    t = trainer(callbacks=[clr], max_epochs=16)
    with caplog.at_level(logging.INFO):
        t.fit(TinyModel(), loader(n=64, batch_size=8))
    assert "ending at base_lr after 2 whole cycle(s) (128 optimizer steps)" in startup_line(caplog)
    assert last_lrs(t) == [0.01]


# ------------------------------------------------------------------ 3. the callback joins a resumed run
class Counting(TinyModel):
    calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        Counting.calls += 1
        return super().training_step(batch, batch_idx)


def plain_checkpoint(tmp: Path, epochs: int = 16) -> Path:
    """A real checkpoint of a run trained WITHOUT the callback: 128 steps at SGD's lr=0.05."""
    pl.seed_everything(0)
    t = trainer(callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True)], max_epochs=epochs,
                enable_checkpointing=True)
    t.fit(Counting(lr=0.05), loader(n=64, batch_size=8))
    assert t.global_step == 128
    return tmp / "last.ckpt"


def resume(tmp: Path, ckpt: Path, clr: CyclicLearningRate, epochs: int, *extra: Callback) -> tuple[pl.Trainer, Any]:
    rec = LRRecorder()
    t = trainer(callbacks=[clr, rec, *extra], max_epochs=epochs, enable_checkpointing=bool(extra), default_root_dir=tmp)
    Counting.calls = 0
    t.fit(Counting(lr=0.05), loader(n=64, batch_size=8), ckpt_path=ckpt)
    return t, rec


def test_a_callback_added_on_resume_plans_the_remaining_steps(tmp_path, caplog):
    ckpt = plain_checkpoint(tmp_path / "a")
    assert "CyclicLearningRate" not in torch.load(ckpt, weights_only=True)["callbacks"]
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, half_cycle_epochs=16)  # one cycle over the run
    with caplog.at_level(logging.INFO):
        t, rec = resume(tmp_path / "b", ckpt, clr, epochs=32)  # 128 more steps
    assert t.global_step == 256 and clr.steps == [128]
    assert last_lrs(t) == [0.01]  # a cycle end (main: one cycle over 256 steps from 0, its rising half: 0.1)
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=64)  # one whole cycle in the remaining 128 steps
    assert [row[0] for row in rec.lrs] == [cyclic_lr(k, **kwargs) for k in range(128)]
    assert clr.plan.start_step == 128 and clr.plan.total_steps == 128
    assert "the cycle starts at the resumed step 128 and is planned over its remaining 128 optimizer steps" in \
        caplog.text


def test_a_callback_added_on_resume_does_not_sweep_trained_weights_unless_asked(tmp_path, caplog):
    ckpt = plain_checkpoint(tmp_path / "a")
    config = RangeTestConfig(num_steps=20, save=False, progress_bar=False)
    clr = CyclicLearningRate(range_test=config)
    with caplog.at_level(logging.INFO):
        t, rec = resume(tmp_path / "b", ckpt, clr, epochs=32)
    assert Counting.calls == 128  # training steps only: no sweep step
    assert clr.range_test_result is None and (clr.max_lr, clr.base_lr) == (0.05, 0.05 / 4)  # the optimizer's LR
    assert "RangeTestConfig(on_resume=True)" in caplog.text
    assert clr.plan.final_lr_ratio == DEFAULT_FINAL_LR_RATIO and last_lrs(t) == [pytest.approx(0.05 / 40)]

    asked = CyclicLearningRate(range_test=RangeTestConfig(num_steps=20, save=False, progress_bar=False,
                                                          on_resume=True))
    resume(tmp_path / "c", ckpt, asked, epochs=32)
    assert Counting.calls > 128 and asked.range_test_result is not None


def test_a_run_the_callback_joined_resumes_again_bitwise(tmp_path):
    ckpt = plain_checkpoint(tmp_path / "a")
    kwargs = dict(range_test=RangeTestConfig(save=False, progress_bar=False), half_cycle_epochs=1)
    _, full = resume(tmp_path / "full", ckpt, CyclicLearningRate(**kwargs), epochs=24)
    saver = ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=164, save_top_k=-1)
    stop = StopAt(164)
    resume(tmp_path / "b", ckpt, CyclicLearningRate(**kwargs), 24, saver, stop)
    mid = next((tmp_path / "b").glob("*step=164.ckpt"))
    state = torch.load(mid, weights_only=True)["callbacks"]["CyclicLearningRate"]
    assert state["plan"]["start_step"] == 128 and state["steps"] == [36]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, second = resume(tmp_path / "c", mid, CyclicLearningRate(**kwargs), epochs=24)
    assert not [w for w in record if "length changed" in str(w.message)]  # the same run: the tail stays put
    assert second.lrs == full.lrs[36:]


# ------------------------------------------------------------------ 4. optimizers stepping at different rates
class GAN(TinyModel):
    """Manual optimization: the discriminator (``layer``) steps every batch, the generator (``head``) every
    second batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        discriminator, generator = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        discriminator.zero_grad()
        self.manual_backward(loss)
        discriminator.step()
        if batch_idx % 2 == 1:
            loss = torch.nn.functional.mse_loss(self(x), y)
            generator.zero_grad()
            self.manual_backward(loss)
            generator.step()

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(self.head.parameters(), lr=0.1)]


class PerOptimizer(Callback):
    def __init__(self) -> None:
        self.lrs: dict[int, list[float]] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        self.lrs.setdefault(index, []).append(optimizer.param_groups[0]["lr"])


def test_each_optimizer_ends_at_its_own_cycle_end(caplog):
    rec = PerOptimizer()
    clr = CyclicLearningRate(base_lr=[0.01, 0.002], max_lr=[0.1, 0.02], half_cycle_epochs=2)
    t = trainer(callbacks=[clr, rec], max_epochs=4)
    with caplog.at_level(logging.INFO):
        t.fit(GAN(), loader(n=80, batch_size=8))  # 10 batches per epoch: 10 discriminator, 5 generator steps
    assert clr.steps == [40, 20]
    assert last_lrs(t) == [0.01, 0.002]  # both at their own cycle end (main: the generator ended at max_lr)
    assert rec.lrs[0] == [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=20) for k in range(40)]
    # The generator's first epoch (5 steps) follows the batch count; from its step 5 on, its own cycle.
    assert rec.lrs[1][5:] == [cyclic_lr(k, base_lr=0.002, max_lr=0.02, step_size_up=10) for k in range(5, 20)]
    assert clr.plan.optimizer_cycles == ((20, 20, 10, 40), (10, 10, 5, 20))
    measured = [r.getMessage() for r in caplog.records if "in the first whole epoch" in r.getMessage()]
    assert len(measured) == 1
    assert re.search(r"optimizer 0: step_size_up=20, .*optimizer 1: step_size_up=10, step_size_down=10 optimizer"
                     r" steps \(2 epochs of 5 steps per rank\), ending at base_lr", measured[0])
