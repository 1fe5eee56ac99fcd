"""CyclicLearningRate on the setups real projects run: fine-tuning param groups, a reused callback, streamed
data, schedulers left in configure_optimizers, and every argument fuzzed by name. A real Trainer throughout."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import LRRecorder, TinyModel, loader, trainer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_clr import ArgumentError, CyclicLearningRate, RangeTestConfig, cyclic_lr, lr_range_test
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO

QUICK = RangeTestConfig(num_steps=30, min_lr=1e-6, max_lr=10.0, save=False, progress_bar=False)


class FineTune(TinyModel):
    """One param group per layer, each with its own configured LR (backbone low, head high)."""

    def __init__(self, lrs: tuple[float, ...] = (1e-4, 1e-3), optimizer: str = "adamw") -> None:
        super().__init__(dim=8)
        self.lrs, self.kind = lrs, optimizer
        self.extra = nn.Linear(1, 1)  # a third group when three LRs are given

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.relu(self.layer(x)))
        return self.extra(out) if len(self.lrs) == 3 else out

    def configure_optimizers(self) -> Any:
        modules = [self.layer, self.head, self.extra][: len(self.lrs)]
        groups = [{"params": m.parameters(), "lr": lr} for m, lr in zip(modules, self.lrs)]
        if self.kind == "adamw":
            return torch.optim.AdamW(groups, lr=self.lrs[-1])
        return torch.optim.SGD(groups, lr=self.lrs[-1], momentum=0.9)


def _ratios(values: Any) -> list[float]:
    values = values if isinstance(values, list) else [values]
    return [v / values[-1] for v in values]


# ------------------------------------------------------------------ 1: fine-tuning groups keep their ratios
@pytest.mark.parametrize("lrs, optimizer", [((1e-4, 1e-3), "adamw"), ((1e-3, 1e-2, 1e-1), "sgd")])
def test_range_test_bounds_keep_the_param_groups_ratios(lrs, optimizer):
    rec = LRRecorder()
    clr = CyclicLearningRate(range_test=QUICK)
    trainer(callbacks=[clr, rec], max_epochs=2).fit(FineTune(lrs, optimizer), loader(n=64))
    expected = [lr / lrs[-1] for lr in lrs]
    assert isinstance(clr.max_lr, list) and len(clr.max_lr) == len(lrs)
    assert _ratios(clr.max_lr) == pytest.approx(expected, rel=1e-12)
    assert _ratios(clr.base_lr) == pytest.approx(expected, rel=1e-12)
    for step_lrs in rec.lrs:  # every step, every group: the configured ratio
        assert [v / step_lrs[-1] for v in step_lrs] == pytest.approx(expected, rel=1e-9)


def test_one_bound_per_group_keeps_its_ratios():
    clr = CyclicLearningRate(base_lr=[1e-5, 1e-4], range_test=QUICK)
    trainer(callbacks=[clr], max_epochs=2).fit(FineTune((1e-4, 1e-3)), loader(n=64))
    assert clr.base_lr == [1e-5, 1e-4]
    assert clr.max_lr[1] / clr.max_lr[0] == pytest.approx(10.0, rel=1e-12)
    assert clr.max_lr[1] > 1e-4


def test_one_group_model_gets_the_range_tests_bounds_as_floats_and_follows_the_plain_schedule():
    """One param group: the bounds are the standalone range test's on the same model and data (not a list),
    and every step's LR is the plain ``cyclic_lr`` of them."""
    torch.manual_seed(0)
    alone = lr_range_test(trainer(), TinyModel(lr=0.01), loader(n=64), config=QUICK)
    rec = LRRecorder()
    clr = CyclicLearningRate(range_test=QUICK, final_lr_ratio=1.0)
    torch.manual_seed(0)
    trainer(callbacks=[clr, rec], max_epochs=2).fit(TinyModel(lr=0.01), loader(n=64))
    assert not alone.fallback and type(clr.base_lr) is float and type(clr.max_lr) is float
    assert (clr.base_lr, clr.max_lr) == (alone.base_lr, alone.max_lr)
    expected = [cyclic_lr(k, base_lr=alone.base_lr, max_lr=alone.max_lr, step_size_up=clr.step_size_up,
                          step_size_down=clr.step_size_down) for k in range(16)]
    assert [lrs[0] for lrs in rec.lrs] == expected


# ------------------------------------------------------------------ 2: a reused callback resolves a new plan
def test_reused_callback_resolves_a_new_plan_like_a_fresh_one():
    clr = CyclicLearningRate(range_test=QUICK)
    torch.manual_seed(0)
    trainer(callbacks=[clr], max_epochs=2).fit(TinyModel(lr=0.01), loader(n=40))
    first_plan, first_result = clr.plan, clr.range_test_result
    assert first_plan.steps_per_epoch == 5

    torch.manual_seed(1)
    model = TinyModel(lr=0.01)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainer(callbacks=[clr], max_epochs=2).fit(model, loader(n=80, seed=3))
    assert clr.plan.steps_per_epoch == 10 and clr.plan != first_plan
    assert clr.range_test_result is not first_result and clr.steps == [20]

    fresh = CyclicLearningRate(range_test=QUICK)
    twin = TinyModel(lr=0.01)
    twin.load_state_dict(state)
    trainer(callbacks=[fresh], max_epochs=2).fit(twin, loader(n=80, seed=3))
    assert fresh.plan == clr.plan  # the same bounds and cycle as a fresh instance would resolve
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ 5: streamed data
class Stream(IterableDataset):
    def __init__(self, n: int = 64) -> None:
        self.data = loader(n=n, batch_size=1).dataset

    def __iter__(self):
        while True:
            yield from (self.data[i] for i in range(len(self.data)))


class CountingModel(TinyModel):
    calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        CountingModel.calls += 1
        return super().training_step(batch, batch_idx)


def test_iterable_dataset_with_max_steps_fills_whole_cycles():
    rec = LRRecorder()
    clr = CyclicLearningRate(range_test=QUICK)
    t = trainer(callbacks=[clr, rec], max_steps=120, max_epochs=-1)
    t.fit(TinyModel(lr=0.01), DataLoader(Stream(), batch_size=8))
    assert t.global_step == 120 and clr.steps == [120]
    assert (clr.step_size_up, clr.step_size_down) == (20, 20) and clr.steps_per_epoch is None
    base, high = clr.base_lr, clr.max_lr
    kwargs = dict(base_lr=base, max_lr=high, step_size_up=20, total_steps=120)
    expected = [cyclic_lr(k, final_lr_ratio=DEFAULT_FINAL_LR_RATIO, **kwargs) for k in range(120)]
    assert [lrs[0] for lrs in rec.lrs] == expected
    assert cyclic_lr(120, **kwargs) == base  # it ends at a cycle end, which the default tail takes lower:
    assert cyclic_lr(120, final_lr_ratio=DEFAULT_FINAL_LR_RATIO, **kwargs) == pytest.approx(base / 10)


def test_iterable_dataset_without_max_steps_fails_before_the_range_test(tmp_path):
    CountingModel.calls = 0
    clr = CyclicLearningRate(range_test=RangeTestConfig(num_steps=30, progress_bar=False))
    t = trainer(callbacks=[clr], max_time={"seconds": 30}, max_epochs=-1, default_root_dir=tmp_path)
    with pytest.raises(ArgumentError, match=r"`step_size_up` must be given.*no length.*max_steps") as info:
        t.fit(CountingModel(), DataLoader(Stream(), batch_size=8))
    assert info.value.argument == "step_size_up"
    assert CountingModel.calls == 0  # no sweep step, no training step
    assert not list(tmp_path.rglob("lr_range_test*"))


# ------------------------------------------------------------------ 8: replaced schedulers leave nothing behind
class WithScheduler(TinyModel):
    def __init__(self, optimizer: str, scheduler: str) -> None:
        super().__init__(optimizer=optimizer, momentum=0.9)
        self.scheduler = scheduler

    def configure_optimizers(self) -> Any:
        opt = super().configure_optimizers()
        if self.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
        else:
            sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.001, max_lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class GroupProbe(LRRecorder):
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.keys = [set(g) for g in optimizer.param_groups]


@pytest.mark.parametrize("optimizer, scheduler", [("sgd", "onecycle"), ("adam", "onecycle"), ("sgd", "cyclic")])
def test_replaced_scheduler_leaves_no_residue(optimizer, scheduler):
    probe = GroupProbe()
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=2)
    t = trainer(callbacks=[clr, probe], max_steps=3, max_epochs=-1)
    with pytest.warns(UserWarning, match="replaces the"):
        t.fit(WithScheduler(optimizer, scheduler), loader(n=64))
    assert t.lr_scheduler_configs == []
    built_with = [0.9] if optimizer == "sgd" else [0.9]  # SGD momentum=0.9; Adam's default betas[0]
    assert [m for m in probe.momenta[-1]] == built_with
    for keys in probe.keys:
        assert not keys & {"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"}


# ------------------------------------------------------------------ 9: every input by name, before any step
@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(cycle_momentum="no"), "cycle_momentum"),
        (dict(fit_whole_cycles="no"), "fit_whole_cycles"),
        (dict(gamma=2.0), "gamma"),
        (dict(gamma=0.5), "gamma"),  # ignored outside exp_range: refused instead of silently dropped
        (dict(step_size_up=10**30), "step_size_up"),
        (dict(step_size_up=10**400), "step_size_up"),
        (dict(gamma=None), "gamma"),
        (dict(gamma="0.9", mode="exp_range"), "gamma"),
        (dict(half_cycle_epochs=None), "half_cycle_epochs"),
        (dict(half_cycle_epochs="2"), "half_cycle_epochs"),
        (dict(half_cycle_epochs=math.inf), "half_cycle_epochs"),
        (dict(scale_fn="nosuch_module_xyz:fn"), "scale_fn"),
        (dict(scale_fn="math:no_such_function"), "scale_fn"),
        (dict(scale_fn=42), "scale_fn"),
        (dict(base_lr=[]), "base_lr"),
        (dict(max_lr=[0.1, "x"]), "max_lr[1]"),
        (dict(base_lr=True), "base_lr"),
        (dict(step_size_down=np.float64(2.0)), "step_size_down"),
        (dict(range_test="fast"), "range_test"),
    ],
)
def test_fuzzed_arguments_are_refused_by_name(kwargs, argument):
    with pytest.raises(ArgumentError) as info:
        CyclicLearningRate(**kwargs)
    assert info.value.argument == argument
    assert f"`{argument}`" in str(info.value) and repr(info.value.value)[:20] in str(info.value)


def test_numpy_and_zero_dim_tensor_numbers_are_accepted():
    clr = CyclicLearningRate(base_lr=np.float32(0.01), max_lr=torch.tensor(0.1), step_size_up=np.int64(4),
                             half_cycle_epochs=torch.tensor(2), cycle_momentum=np.bool_(False))
    assert clr.settings.base_lr == (float(np.float32(0.01)),) and clr.settings.step_size_up == 4
    assert type(clr.settings.max_lr[0]) is float and type(clr.settings.step_size_up) is int
    t = trainer(callbacks=[clr], max_epochs=1)
    t.fit(TinyModel(), loader(n=32))
    state = clr.state_dict()
    assert state["plan"]["step_size_up"] == 4 and type(state["plan"]["max_lr"][0]) is float


def nan_scale(x: float) -> float:
    return math.nan if x >= 2 else 1.0


def negative_scale(x: float) -> float:
    return -5.0


@pytest.mark.parametrize("fn, scale_mode", [(nan_scale, "cycle"), (negative_scale, "iterations")])
def test_a_scale_fn_returning_nan_or_negative_fails_at_fit_start(fn, scale_mode):
    CountingModel.calls = 0
    clr = CyclicLearningRate(step_size_up=2, scale_fn=fn, scale_mode=scale_mode, range_test=QUICK)
    with pytest.raises(ValueError, match=r"custom `scale_fn`.*returned (nan|-5\.0).*finite number >= 0"):
        trainer(callbacks=[clr], max_epochs=3).fit(CountingModel(), loader(n=32))
    assert CountingModel.calls == 0  # before the range test's first sweep step


def test_bad_list_length_fails_at_fit_start_naming_the_argument():
    CountingModel.calls = 0
    clr = CyclicLearningRate(base_lr=0.01, max_lr=[0.1, 0.2], step_size_up=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ArgumentError) as info:
            trainer(callbacks=[clr]).fit(CountingModel(), loader(n=16))
    assert info.value.argument == "max_lr" and info.value.value == [0.1, 0.2]
    assert CountingModel.calls == 0
