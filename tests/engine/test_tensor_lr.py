"""Tensor LRs and fused optimizers under AMP, through a real Trainer (issue 20, findings 6 and 7).

A tensor LR (``Adam(params, lr=torch.tensor(1e-3))``) is what a compiled or CUDA-graph-captured
``optimizer.step()`` needs: the writer, the range test's sweep and its restore change its value in place and
never swap it for a float. A fused optimizer's skip flag under the GradScaler is never read during the step
that sets it (on a GPU that read is a host-device sync); it is read at the next step, and the count is exact
whenever it is read.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pytest
import torch
from helpers import StepLRs, TinyModel, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_clr import CyclicLearningRate, RangeTestConfig

QUICK = RangeTestConfig(num_steps=20, min_lr=1e-4, max_lr=1.0, save=False, progress_bar=False)


class TensorLR(TinyModel):
    """Adam with the LR and betas given as tensors (or floats); records the param group each step sees."""

    def __init__(self, tensors: bool = True, fused: bool = False, scheduler: bool = False) -> None:
        super().__init__(log_loss=False)
        self.tensors, self.fused, self.scheduler = tensors, fused, scheduler
        self.seen: list[tuple[Any, float, Any, float]] = []  # (lr object, its value, beta1 object, its value)

    def configure_optimizers(self) -> Any:
        t = torch.tensor if self.tensors else float
        self.lr_given, self.betas_given = t(0.01), (t(0.9), t(0.999))
        opt = torch.optim.Adam(self.parameters(), lr=self.lr_given, betas=self.betas_given, fused=self.fused)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=100, cycle_momentum=True)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        group = self.trainer.optimizers[0].param_groups[0]
        self.seen.append((group["lr"], float(group["lr"]), group["betas"][0], float(group["betas"][0])))
        return super().training_step(batch, batch_idx)


def _expected(clr: CyclicLearningRate, steps: int) -> tuple[list[float], list[float]]:
    plan = clr.plan
    assert plan is not None
    schedule = plan.schedule()
    lrs = [schedule.lr(k, plan.base_lr[0], plan.max_lr[0]) for k in range(steps)]
    return lrs, [schedule.momentum(k, plan.base_momentum, plan.max_momentum) for k in range(steps)]


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_a_tensor_lr_and_betas_stay_the_users_tensors_in_the_range_test_and_in_training(fused: bool) -> None:
    model = TensorLR(fused=fused)
    clr = CyclicLearningRate(step_size_up=3, cycle_momentum=True, range_test=QUICK)
    t = trainer(callbacks=[clr], max_epochs=2)
    t.fit(model, loader(n=32))
    result = clr.range_test_result
    assert result is not None and t.global_step == 8
    lr, beta1 = model.lr_given, model.betas_given[0]
    assert all(seen[0] is lr and seen[2] is beta1 for seen in model.seen)  # never replaced, never a float
    group = t.optimizers[0].param_groups[0]
    assert group["lr"] is lr and group["betas"][0] is beta1 and group["betas"][1] is model.betas_given[1]
    sweep, training = model.seen[: len(result.lrs)], model.seen[len(result.lrs):]
    assert [s[1] for s in sweep] == pytest.approx(result.lrs, rel=1e-6)  # the sweep's LRs, in place
    assert [s[3] for s in sweep] == pytest.approx([0.9] * len(sweep))  # the sweep leaves betas alone
    lrs, momenta = _expected(clr, len(training))
    assert len(training) == 8 and [s[1] for s in training] == pytest.approx(lrs, rel=1e-6)
    assert [s[3] for s in training] == pytest.approx(momenta, rel=1e-6)


def test_a_float_lr_stays_a_float() -> None:
    model = TensorLR(tensors=False)
    clr = CyclicLearningRate(step_size_up=3, cycle_momentum=True, range_test=QUICK)
    t = trainer(callbacks=[clr], max_epochs=1)
    t.fit(model, loader(n=32))
    assert all(type(s[0]) is float and type(s[2]) is float for s in model.seen)
    group = t.optimizers[0].param_groups[0]
    assert type(group["lr"]) is float and all(type(b) is float for b in group["betas"])


def test_a_replaced_scheduler_leaves_the_tensor_lr_and_betas_in_place() -> None:
    # OneCycleLR writes the tensor LR in place and a float beta1 at construction; the callback removes it.
    model = TensorLR(scheduler=True)
    clr = CyclicLearningRate(base_lr=0.001, max_lr=0.01, step_size_up=3, cycle_momentum=True)
    t = trainer(callbacks=[clr], max_epochs=1)
    with pytest.warns(UserWarning, match="replaces the OneCycleLR scheduler"):
        t.fit(model, loader(n=32))
    assert all(seen[0] is model.lr_given and seen[2] is model.betas_given[0] for seen in model.seen)
    lrs, momenta = _expected(clr, 4)
    assert [s[1] for s in model.seen] == pytest.approx(lrs, rel=1e-6)
    assert [s[3] for s in model.seen] == pytest.approx(momenta, rel=1e-6)
    group = t.optimizers[0].param_groups[0]
    assert not {"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"} & set(group)


# ------------------------------------------------------------------ fused optimizers under the GradScaler
class InfAt(TinyModel):
    """Fused Adam; the loss is inf at the given batches, so the GradScaler makes the optimizer skip them."""

    def __init__(self, inf_at: tuple[int, ...]) -> None:
        super().__init__(optimizer="fused_adam", log_loss=False)
        self.inf_at = inf_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("inf") if batch_idx in self.inf_at else loss


class FlagReads(TorchDispatchMode):
    """Every tensor whose value Python reads (``bool``, ``float``, ``.item()``: on a GPU each is a sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[torch.Tensor] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Optional[dict] = None) -> Any:
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            self.read.append(args[0])
        return func(*args, **(kwargs or {}))


def _amp_fit(tmp_path: Any, inf_at: tuple[int, ...], **kwargs: Any) -> tuple[Any, CyclicLearningRate, StepLRs, Any]:
    clr = CyclicLearningRate(base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=False)
    rec = StepLRs()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    t = trainer(callbacks=[clr, rec], plugins=[plugin], default_root_dir=tmp_path, **kwargs)
    return t, clr, rec, scaler


def test_the_fused_skip_flag_is_not_read_in_the_step_that_sets_it(tmp_path: Any) -> None:
    flags: list[torch.Tensor] = []  # every flag the GradScaler handed to the optimizer

    def keep_flag(optimizer: Any, args: Any, kwargs: Any) -> None:
        if isinstance(getattr(optimizer, "found_inf", None), torch.Tensor):
            flags.append(optimizer.found_inf)

    t, clr, rec, scaler = _amp_fit(tmp_path, (2,), max_epochs=1)
    handle = register_optimizer_step_pre_hook(keep_flag)
    reads = FlagReads()
    try:
        with reads:
            t.fit(InfAt(inf_at=(2,)), loader(n=48))
    finally:
        handle.remove()
    assert len(flags) == 6 and t.global_step == 6
    assert not [r for r in reads.read if any(r is f for f in flags)]  # on a GPU: no sync per step
    assert clr.steps == [5]  # the skipped step is not counted
    assert rec.lrs[3] == rec.lrs[2]  # the step after the skipped one runs with its LR again


def test_a_skipped_last_step_is_taken_back_before_the_checkpoint_is_saved(tmp_path: Any) -> None:
    """The flag of the fit's last step is read when the state is saved: the checkpoint has the exact count."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    t, clr, rec, scaler = _amp_fit(tmp_path, (1, 5), max_epochs=1, enable_checkpointing=True)
    t.callbacks.append(ckpt)
    t.fit(InfAt(inf_at=(1, 5)), loader(n=48))
    skipped = round(math.log2(2.0**10 / scaler.get_scale()))
    assert skipped == 2 and t.global_step == 6
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    saved = next(v for k, v in state.items() if k.startswith("CyclicLearningRate"))
    assert saved["steps"] == [4] and clr.steps == [4]
    schedule = clr.plan.schedule()  # type: ignore[union-attr]
    lr = [schedule.lr(k, 0.01, 0.1) for k in range(5)]
    assert rec.lrs == pytest.approx([lr[0], lr[1], lr[1], lr[2], lr[3], lr[4]])  # a skip repeats its LR
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr[4])  # the last step's LR, taken back
