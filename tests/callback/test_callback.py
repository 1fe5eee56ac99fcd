"""CyclicLearningRate with a real Trainer: LR traces against torch's CyclicLR, accumulation, manual
optimization, momentum rules, resume, precision and every bad input."""

from __future__ import annotations

import logging
import math
import pickle
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import LRRecorder, StepLRs, StopAt, TinyModel, loader, trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import SingleDeviceStrategy

from lightning_clr import (
    ArgumentError,
    CyclePlan,
    CyclicLearningRate,
    DivergenceGuard,
    RangeTestConfig,
    cyclic_lr,
    cyclic_momentum,
)
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO


def half_scale(cycle: float) -> float:
    return 0.5**cycle


def tail_lr(step: int, total: int, **kwargs: Any) -> float:
    """A ``total``-step run with the default annealing tail (automatic for automatic bounds, or given)."""
    return cyclic_lr(step, total_steps=total, final_lr_ratio=DEFAULT_FINAL_LR_RATIO, **kwargs)


def torch_lrs(n_steps: int, groups: int = 1, momentum: float = 0.9, **kwargs: Any) -> list[list[float]]:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=0.1, momentum=momentum)
    scheduler = torch.optim.lr_scheduler.CyclicLR(opt, cycle_momentum=False, **kwargs)
    out = []
    for _ in range(n_steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(base_lr=0.01, max_lr=0.1, step_size_up=3, mode="triangular"),
        dict(base_lr=[0.01, 0.001], max_lr=[0.1, 0.05], step_size_up=2, step_size_down=5, mode="triangular2"),
        dict(base_lr=0.01, max_lr=0.1, step_size_up=4, mode="exp_range", gamma=0.97),
        dict(base_lr=0.01, max_lr=0.1, step_size_up=2, scale_fn=half_scale, scale_mode="cycle"),
    ],
)
def test_lr_trace_equals_torch_cycliclr_per_optimizer_step(kwargs):
    rec = LRRecorder()
    clr = CyclicLearningRate(cycle_momentum=False, final_lr_ratio=1.0, **kwargs)  # 1.0: no tail, exactly torch's
    t = trainer(callbacks=[clr, rec], max_epochs=3)
    t.fit(TinyModel(param_groups=2), loader(n=64, batch_size=8))
    assert len(rec.lrs) == t.global_step == 24
    torch_kwargs = {k: v for k, v in kwargs.items()}
    assert rec.lrs == torch_lrs(24, groups=2, **torch_kwargs)  # bitwise, every group, every step


def test_an_explicit_tail_is_torch_cycliclr_until_the_last_falling_half_then_below_it():
    rec = LRRecorder()
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=3)
    clr = CyclicLearningRate(final_lr_ratio=DEFAULT_FINAL_LR_RATIO, **kwargs)  # given: it applies to given bounds
    t = trainer(callbacks=[clr, rec], max_epochs=3)  # 24 steps, the tail: the last 3
    t.fit(TinyModel(), loader(n=64, batch_size=8))
    torch_trace = [lrs[0] for lrs in torch_lrs(24, **kwargs)]
    ours = [lrs[0] for lrs in rec.lrs]
    assert ours[:22] == torch_trace[:22]  # steps 0..21: the floor is still base_lr (the tail starts after step 21)
    assert all(a < b for a, b in zip(ours[22:], torch_trace[22:]))
    assert ours == [cyclic_lr(k, total_steps=24, final_lr_ratio=DEFAULT_FINAL_LR_RATIO, **kwargs) for k in range(24)]
    assert cyclic_lr(24, total_steps=24, final_lr_ratio=DEFAULT_FINAL_LR_RATIO, **kwargs) == pytest.approx(0.001)


def test_accumulation_steps_once_per_optimizer_step_including_short_window():
    rec = LRRecorder()
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=False)
    t = trainer(callbacks=[clr, rec], max_epochs=2, accumulate_grad_batches=3)
    t.fit(TinyModel(), loader(n=80, batch_size=8))  # 10 batches -> 3 + 3 + 3 + 1: 4 optimizer steps per epoch
    assert t.global_step == 8 and clr.steps == [8] and clr.plan.total_steps == 8
    expected = [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=3) for k in range(8)]  # given bounds: no tail
    assert [lrs[0] for lrs in rec.lrs] == expected


def test_derived_cycle_length_uses_optimizer_steps_per_epoch():
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, half_cycle_epochs=2.0, fit_whole_cycles=False)
    t = trainer(callbacks=[clr], max_epochs=1, accumulate_grad_batches=3)
    t.fit(TinyModel(), loader(n=80, batch_size=8))
    assert clr.steps_per_epoch == 4 and clr.step_size_up == 8 and clr.step_size_down == 8
    assert clr.resolved_half_cycle_epochs == 2.0


def test_fit_whole_cycles_ends_the_run_at_a_cycle_end():
    rec = LRRecorder()
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, half_cycle_epochs=2.0, cycle_momentum=False)
    t = trainer(callbacks=[clr, rec], max_epochs=10)
    t.fit(TinyModel(), loader(n=40, batch_size=8))  # 5 steps/epoch, 50 steps: 2 cycles of 12 up + 13 down
    assert (clr.step_size_up, clr.step_size_down) == (12, 13)
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=12, step_size_down=13)
    assert [lr[0] for lr in rec.lrs] == [cyclic_lr(k, **kwargs) for k in range(50)]  # given bounds: no tail
    assert cyclic_lr(t.global_step, **kwargs) == 0.01  # the run ends exactly at a cycle end
    assert t.optimizers[0].param_groups[0]["lr"] == 0.01
    assert max(lr[0] for lr in rec.lrs[-12:]) < max(lr[0] for lr in rec.lrs)


class ManualModel(TinyModel):
    def __init__(self, steps_per_batch: int = 1, two_optimizers: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.steps_per_batch = steps_per_batch
        self.two_optimizers = two_optimizers

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        x, y = batch
        for _ in range(self.steps_per_batch):
            for opt in opts:
                loss = torch.nn.functional.mse_loss(self(x), y)
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        if self.two_optimizers:
            return [torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.Adam(self.head.parameters())]
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_manual_optimization_steps_once_per_optimizer_step():
    rec = LRRecorder()
    # Two steps per batch: Trainer's run length (5 batches) is not this optimizer's 10 steps, so no tail here.
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3, final_lr_ratio=1.0)
    t = trainer(callbacks=[clr, rec], max_epochs=1)
    t.fit(ManualModel(steps_per_batch=2), loader(n=40, batch_size=8))
    assert clr.steps == [10] and len(rec.lrs) == 10
    assert [lrs[0] for lrs in rec.lrs] == [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=3) for k in range(10)]


def test_several_optimizers_each_follow_the_schedule_with_their_own_bounds():
    rec = LRRecorder()
    clr = CyclicLearningRate(base_lr=[0.01, 0.001], max_lr=[0.1, 0.004], step_size_up=2)
    t = trainer(callbacks=[clr, rec], max_epochs=1)
    t.fit(ManualModel(two_optimizers=True), loader(n=32, batch_size=8))
    assert clr.steps == [4, 4]
    sgd = [lrs[0] for lrs in rec.lrs[0::2]]
    adam = [lrs[0] for lrs in rec.lrs[1::2]]
    assert sgd == [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=2) for k in range(4)]
    assert adam == [cyclic_lr(k, base_lr=0.001, max_lr=0.004, step_size_up=2) for k in range(4)]


@pytest.mark.parametrize(
    "optimizer, momentum, cycled",
    [("sgd", 0.0, False), ("sgd", 0.9, True), ("adam", 0.0, True), ("adagrad", 0.0, False), ("rmsprop", 0.0, False)],
)
def test_momentum_cycles_only_where_it_was_already_used(optimizer, momentum, cycled):
    rec = LRRecorder()
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=True)
    t = trainer(callbacks=[clr, rec], max_epochs=1)
    model = TinyModel(optimizer=optimizer, momentum=momentum)
    t.fit(model, loader(n=40, batch_size=8))
    seen = [m[0] for m in rec.momenta]
    if cycled:
        expected = [cyclic_momentum(k, base_momentum=0.85, max_momentum=0.95, step_size_up=2) for k in range(5)]
        assert seen == expected
    elif optimizer in ("sgd", "rmsprop"):
        assert seen == [0.0] * 5  # never switched on (torch's CyclicLR switches it on)
        assert t.optimizers[0].param_groups[0]["momentum"] == 0.0
    else:
        assert seen == [None] * 5  # Adagrad: no momentum, not an error


def test_scheduler_from_configure_optimizers_is_replaced_with_a_warning():
    class WithCyclicLR(TinyModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.0)
            # the classic mistake: per-epoch stepping, and CyclicLR switches momentum on
            return [opt], [torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.001, max_lr=0.006, step_size_up=2)]

    rec = LRRecorder()
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=True)
    t = trainer(callbacks=[clr, rec], max_epochs=2)
    with pytest.warns(UserWarning, match=r"replaces the CyclicLR scheduler \(interval='epoch'\)"):
        t.fit(WithCyclicLR(), loader(n=24, batch_size=8))
    assert t.lr_scheduler_configs == []
    assert [lrs[0] for lrs in rec.lrs] == [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=2) for k in range(6)]
    assert {m[0] for m in rec.momenta} == {0}  # CyclicLR's momentum switch-on was undone


def _fit(tmp_path, max_steps: int, ckpt_path: Any = None, every: int = 0, shuffle: bool = True,
         stop_at: int = 0) -> tuple:
    pl.seed_everything(7)
    rec = LRRecorder()
    callbacks: list[Any] = [
        CyclicLearningRate(base_lr=0.001, max_lr=0.01, step_size_up=3, mode="triangular2", cycle_momentum=True,
                           final_lr_ratio=DEFAULT_FINAL_LR_RATIO), rec
    ]
    if every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1))
    if stop_at:
        callbacks.append(StopAt(stop_at))
    t = trainer(callbacks=callbacks, max_steps=max_steps, max_epochs=-1, enable_checkpointing=bool(every))
    model = TinyModel(optimizer="adam")
    t.fit(model, loader(n=40, batch_size=8, shuffle=shuffle), ckpt_path=ckpt_path)
    return rec, t, model


@pytest.mark.parametrize("stop_at", [7, 10])  # mid-epoch, and at an epoch end (5 batches per epoch)
def test_resume_continues_the_lr_sequence_bitwise(tmp_path, stop_at):
    # 17 steps with an annealing tail over the last 3; the first fit is preempted after `stop_at`.
    full, _, full_model = _fit(tmp_path / "a", max_steps=17, shuffle=False)
    first, _, _ = _fit(tmp_path / "b", max_steps=17, every=stop_at, shuffle=False, stop_at=stop_at)
    ckpt = next((tmp_path / "b").glob(f"*step={stop_at}.ckpt"))
    state = torch.load(ckpt, weights_only=False)["callbacks"]["CyclicLearningRate"]
    assert state["steps"] == [stop_at] and state["plan"]["step_size_up"] == 3
    assert state["plan"]["total_steps"] == 17 and state["plan"]["final_lr_ratio"] == DEFAULT_FINAL_LR_RATIO
    pickle.dumps(state)
    second, t2, resumed_model = _fit(tmp_path / "c", max_steps=17, ckpt_path=ckpt, shuffle=False)
    assert t2.global_step == 17
    assert first.lrs + second.lrs == full.lrs
    assert first.momenta + second.momenta == full.momenta
    if stop_at == 10:  # Lightning replays a half-finished epoch from its first batch, so weights match only here
        for p, q in zip(full_model.parameters(), resumed_model.parameters()):
            assert torch.equal(p, q)


def test_a_resumed_fit_that_runs_longer_moves_the_tail_to_its_new_end(tmp_path):
    first, _, _ = _fit(tmp_path / "a", max_steps=10, every=10, shuffle=False)
    ckpt = next((tmp_path / "a").glob("*step=10.ckpt"))
    with pytest.warns(UserWarning, match=r"the run's length changed from 10 to 20 optimizer steps: the annealing"
                                         r" tail \(final_lr_ratio=0.1\) now ends at step 20"):
        second, t2, _ = _fit(tmp_path / "b", max_steps=20, ckpt_path=ckpt, shuffle=False)
    kwargs = dict(base_lr=0.001, max_lr=0.01, step_size_up=3, mode="triangular2")
    assert [lr[0] for lr in first.lrs] == [tail_lr(k, 10, **kwargs) for k in range(10)]
    assert [lr[0] for lr in second.lrs] == [tail_lr(k, 20, **kwargs) for k in range(10, 20)]
    assert t2.callbacks[0].plan.total_steps == 20


def test_scale_fn_is_saved_by_import_path_and_a_lambda_is_not(tmp_path):
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=2, scale_fn=f"{__name__}:half_scale")
    assert clr.settings.scale_fn is half_scale
    trainer(callbacks=[clr], max_epochs=1).fit(TinyModel(), loader(n=16))
    state = clr.state_dict()
    assert state["plan"]["scale_fn_path"] == f"{__name__}:half_scale" and state["plan"]["custom_scale_fn"]
    fresh = CyclicLearningRate()
    fresh.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert fresh.settings.scale_fn is None  # a checkpoint's path is data: loading never imports it
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=2, scale_fn=lambda c: 1.0)
    trainer(callbacks=[clr], max_epochs=1).fit(TinyModel(), loader(n=16))
    with pytest.warns(UserWarning, match="not saved in the checkpoint"):
        state = clr.state_dict()
    assert state["plan"]["scale_fn_path"] is None and state["plan"]["custom_scale_fn"]
    pickle.dumps(state)


@pytest.mark.parametrize("optimizer", ["sgd", "fused_adam"])
def test_amp_steps_skipped_by_the_grad_scaler_do_not_advance_the_schedule(optimizer: str):
    # SGD: the GradScaler does not call step() on an inf step. Fused Adam skips the update itself: the GradScaler
    # calls its step() with `found_inf` set, and the step hook must not count it.
    class InfOnce(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            if batch_idx == 4:
                loss = loss * float("inf")
            return loss

    rec = StepLRs()  # the LR each step runs with: a fused skip is taken back at the next step's pre-hook
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    t = trainer(callbacks=[clr, rec], max_epochs=1, plugins=[plugin])
    model = InfOnce(optimizer=optimizer, momentum=0.9)
    t.fit(model, loader(n=64, batch_size=8))
    assert getattr(t.optimizers[0], "_step_supports_amp_scaling", False) == (optimizer == "fused_adam")
    skipped = round(math.log2(2.0**10 / scaler.get_scale()))
    assert skipped >= 1  # the forced inf step at least
    assert t.global_step == 8  # Lightning counts the skipped step ...
    assert clr.steps == [8 - skipped]  # ... the schedule does not
    lrs = rec.lrs
    assert lrs[5] == lrs[4]  # the step after the skipped one repeats its LR
    distinct = [lrs[0]] + [b for a, b in zip(lrs, lrs[1:]) if b != a]  # a skipped step repeats its LR
    assert len(lrs) - len(distinct) == skipped
    assert distinct == [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=3) for k in range(8 - skipped + 1)][
        : len(distinct)
    ]


def test_works_with_bf16_validation_limits_and_lr_monitor(tmp_path):
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=2)
    logger = CSVLogger(tmp_path, name="run")
    t = pl.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_epochs=2, limit_train_batches=4, limit_val_batches=2,
        val_check_interval=2, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
        callbacks=[clr, LearningRateMonitor(logging_interval="step")], enable_checkpointing=False,
    )
    t.fit(TinyModel(momentum=0.9), loader(n=64), loader(n=32))
    assert t.global_step == 8 and clr.steps == [8]
    rows = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = next(i for i, name in enumerate(header) if name.startswith("lr-SGD"))
    logged = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    expected = [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=2) for k in range(8)]
    assert logged == pytest.approx(expected, rel=1e-12)  # the monitor sees the LR change every step


def test_fast_dev_run_and_max_steps():
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1)
    t = trainer(callbacks=[clr], fast_dev_run=True)
    t.fit(TinyModel(), loader(n=64))
    assert clr.steps == [1]
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=2)
    t = trainer(callbacks=[clr], max_steps=5, max_epochs=-1)
    t.fit(TinyModel(), loader(n=16))
    assert clr.steps == [5]


def test_fast_dev_run_without_bounds_uses_explicit_fallback_bounds(caplog):
    clr = CyclicLearningRate()
    t = trainer(callbacks=[clr], fast_dev_run=2)
    with caplog.at_level("INFO"):
        t.fit(TinyModel(lr=0.02), loader(n=64))
    assert clr.max_lr == 0.02 and clr.base_lr == 0.005
    assert "fast_dev_run` skips the range test" in caplog.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(base_lr=0.0), r"`base_lr`.*got 0\.0"),
        (dict(base_lr=-0.1), r"`base_lr`.*-0\.1"),
        (dict(max_lr=float("nan")), r"`max_lr`.*nan"),
        (dict(base_lr=float("inf")), r"`base_lr`.*inf"),
        (dict(base_lr=0.1, max_lr=0.01), r"`max_lr` must be >= `base_lr` \(0\.1\).*got 0\.01"),
        (dict(base_lr=[0.1, 0.1], max_lr=[0.2, 0.01]), r"`max_lr` must be >= .*got \[0\.2, 0\.01\]"),
        (dict(step_size_up=0), r"`step_size_up` must be a whole number in \[1, 1e\+09\].*got 0"),
        (dict(step_size_down=-3), r"`step_size_down`.*-3"),
        (dict(step_size_up=2.5), r"`step_size_up` must be a whole number.*2\.5"),
        (dict(mode="foo"), r"`mode` must be one of .*'foo'"),
        (dict(mode="exp_range", gamma=0.0), r"`gamma`.*0\.0"),
        (dict(mode="exp_range", gamma=1.01), r"`gamma`.*1\.01"),
        (dict(base_momentum=0.95, max_momentum=0.85), r"`base_momentum` must be <= `max_momentum` \(0\.85\)"),
        (dict(max_momentum=1.0), r"`max_momentum` must be a number in \[0, 1\), got 1\.0"),
        (dict(base_momentum=-0.5), r"`base_momentum`.*-0\.5"),
        (dict(half_cycle_epochs=0), r"`half_cycle_epochs`.*got 0"),
        (dict(scale_fn="not_a_module_xyz:f"), r"`scale_fn`.*not_a_module_xyz"),
        (dict(guard=False), r"`guard` must be a DivergenceGuard \(DivergenceGuard\(enabled=False\) turns it off\)"),
    ],
)
def test_bad_arguments_raise_in_init_naming_argument_and_value(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        CyclicLearningRate(**kwargs)


class CountingModel(TinyModel):
    calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        CountingModel.calls += 1
        return super().training_step(batch, batch_idx)


class NoOptimizer(CountingModel):
    def configure_optimizers(self) -> Any:
        return None


class GroupWithoutLR(CountingModel):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        del opt.param_groups[0]["lr"]
        return opt


@pytest.mark.parametrize(
    "model, kwargs, match",
    [
        (NoOptimizer(), {}, "needs an optimizer"),
        (GroupWithoutLR(), {}, r"param group 0 of optimizer 0 \(SGD\) has no 'lr'"),
        (CountingModel(), dict(base_lr=[0.01, 0.02, 0.03], max_lr=0.1), (
            r"`base_lr` must be one value or one per param group: the optimizer\(s\) have 1,"
            r" got \[0\.01, 0\.02, 0\.03\]"
        )),
    ],
)
def test_bad_setup_raises_before_any_training_step(model, kwargs, match):
    CountingModel.calls = 0
    kwargs = {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2, **kwargs}
    t = trainer(callbacks=[CyclicLearningRate(**kwargs)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            t.fit(model, loader(n=16))
    assert CountingModel.calls == 0


def test_state_after_fit_holds_resolved_values():
    clr = CyclicLearningRate(base_lr=0.01, max_lr=[0.1, 0.2], half_cycle_epochs=1.0, fit_whole_cycles=False)
    trainer(callbacks=[clr], max_epochs=1).fit(TinyModel(param_groups=2), loader(n=40))
    assert clr.base_lr == 0.01 and clr.max_lr == [0.1, 0.2] and clr.step_size_up == 5
    state = clr.state_dict()
    plan = state["plan"]
    assert plan["base_lr"] == [0.01, 0.01] and plan["max_lr"] == [0.1, 0.2] and state["steps"] == [5]


def test_final_lr_ratio_anneals_the_last_falling_half_in_a_fit():
    rec = LRRecorder()
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, half_cycle_epochs=1.0, final_lr_ratio=0.01)
    t = trainer(callbacks=[clr, rec], max_epochs=4)
    t.fit(TinyModel(), loader(n=40, batch_size=8))  # 20 steps: 2 cycles of 5 up + 5 down
    assert (clr.step_size_up, clr.step_size_down) == (5, 5) and clr.plan.total_steps == 20
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=5)
    expected = [cyclic_lr(k, total_steps=20, final_lr_ratio=0.01, **kwargs) for k in range(20)]
    assert [lrs[0] for lrs in rec.lrs] == expected
    plain = [cyclic_lr(k, **kwargs) for k in range(20)]
    assert expected[:16] == plain[:16] and all(e < p for e, p in zip(expected[16:], plain[16:]))
    assert cyclic_lr(20, total_steps=20, final_lr_ratio=0.01, **kwargs) == pytest.approx(1e-4)  # the run's end


def test_final_lr_ratio_needs_a_known_run_length():
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3, final_lr_ratio=0.2)
    t = trainer(callbacks=[clr], max_epochs=-1, max_time={"seconds": 5})
    with pytest.raises(ArgumentError, match=r"`final_lr_ratio` must be 1.0 when the run's length is unknown"):
        t.fit(TinyModel(), torch.utils.data.DataLoader(_Stream(), batch_size=8))


def test_the_default_tail_is_left_out_when_the_run_length_is_unknown(caplog):
    rec = LRRecorder()
    config = RangeTestConfig(num_steps=10, save=False, progress_bar=False)
    # base_lr automatic: the default tail. The guard off: 0.1 is too high for some initial weights, and the guard's
    # lowered bounds (right, but not this test's subject) broke the comparison below (seen under `-n 3`)
    clr = CyclicLearningRate(max_lr=0.1, step_size_up=3, range_test=config, guard=DivergenceGuard(enabled=False))
    t = trainer(callbacks=[clr, rec], max_epochs=-1, max_time={"seconds": 2})
    with caplog.at_level(logging.INFO):
        t.fit(TinyModel(), torch.utils.data.DataLoader(_Stream(), batch_size=8))
    assert clr.plan.final_lr_ratio == 1.0 and clr.plan.total_steps is None
    assert "ends without the default annealing tail (final_lr_ratio=0.1)" in caplog.text
    assert [lrs[0] for lrs in rec.lrs] == [cyclic_lr(k, base_lr=clr.base_lr, max_lr=0.1, step_size_up=3)
                                           for k in range(len(rec.lrs))]


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        data = loader(n=16, batch_size=1).dataset
        while True:
            yield from (data[i] for i in range(len(data)))


def test_the_step_hook_counts_real_steps_and_is_removed_after_the_fit_even_after_an_error():
    class Boom(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3)
    model = Boom()
    t = trainer(callbacks=[clr], max_epochs=1)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(model, loader(n=64, batch_size=8))
    opt = t.optimizers[0]
    assert clr.steps == [3]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks  # no hook of ours stays
    lr = opt.param_groups[0]["lr"]
    opt.step()  # the user's own step after the fit: not the schedule's business any more
    assert clr.steps == [3] and opt.param_groups[0]["lr"] == lr


class _SuperStepSGD(torch.optim.SGD):
    """A subclass whose step() calls SGD.step(): torch runs the instance's step hooks in both wrapped calls."""

    def step(self, closure: Any = None) -> Any:
        return super().step(closure)


class _SuperStepModel(TinyModel):
    def configure_optimizers(self) -> Any:
        torch.optim.SGD(self.parameters(), lr=self.lr)  # any plain SGD wraps SGD.step with torch's hook runner
        return _SuperStepSGD(self.parameters(), lr=self.lr)


def test_a_subclass_calling_super_step_counts_one_step_per_step():
    rec = LRRecorder()
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3, final_lr_ratio=1.0)
    t = trainer(callbacks=[clr, rec], max_epochs=1)
    t.fit(_SuperStepModel(), loader(n=64, batch_size=8))
    assert t.global_step == 8 and clr.steps == [8]
    assert [lrs[0] for lrs in rec.lrs] == [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=3) for k in range(8)]


def test_half_cycle_epochs_is_the_given_value_before_the_fit_and_the_plans_after():
    """As base_lr, step_size_up and mode are: the whole-cycle fit changes the half-cycle, and the property says so."""
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, half_cycle_epochs=2.0)
    assert clr.half_cycle_epochs == 2.0 and clr.resolved_half_cycle_epochs is None
    trainer(callbacks=[clr], max_epochs=3).fit(TinyModel(), loader(n=32, batch_size=8))  # 4 steps per epoch
    assert clr.steps_per_epoch == 4 and clr.step_size_up != 8  # 12 steps: no whole cycle of 2 * 8
    assert clr.half_cycle_epochs == clr.step_size_up / 4 == clr.resolved_half_cycle_epochs
    assert clr.settings.half_cycle_epochs == 2.0
    given = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=6)
    trainer(callbacks=[given], max_epochs=3).fit(TinyModel(), loader(n=32, batch_size=8))
    assert given.half_cycle_epochs == 1.5


class _RankZeroSays(SingleDeviceStrategy):
    """A real single-process strategy whose broadcast hands back what rank 0 holds, as DDP's does on rank 1:
    here, rank 0's plan."""

    def __init__(self, rank_zero_plan: Any) -> None:
        super().__init__(device=torch.device("cpu"))
        self.rank_zero_plan = rank_zero_plan

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.rank_zero_plan if isinstance(obj, CyclePlan) else obj


def test_every_rank_follows_the_plan_rank_zero_broadcasts():
    """The fast twin of the DDP tests: this rank resolves another plan than rank 0; it warns and trains on
    rank 0's plan, LR by LR."""
    rank_zero = CyclicLearningRate(base_lr=0.02, max_lr=0.2, half_cycle_epochs=1.0, final_lr_ratio=1.0)
    trainer(callbacks=[rank_zero], max_epochs=2).fit(TinyModel(), loader(n=32, batch_size=8))
    rec = LRRecorder()
    this_rank = CyclicLearningRate(base_lr=0.01, max_lr=0.1, half_cycle_epochs=1.0, final_lr_ratio=1.0)
    with pytest.warns(UserWarning, match="every rank follows rank 0's"):
        trainer(callbacks=[this_rank, rec], max_epochs=2, strategy=_RankZeroSays(rank_zero.plan)).fit(
            TinyModel(), loader(n=32, batch_size=8)
        )
    assert this_rank.plan == rank_zero.plan and (this_rank.base_lr, this_rank.max_lr) == (0.02, 0.2)
    expected = [cyclic_lr(k, base_lr=0.02, max_lr=0.2, step_size_up=4) for k in range(8)]
    assert [lrs[0] for lrs in rec.lrs] == expected
