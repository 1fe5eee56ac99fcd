"""ScheduleWriter: the optimizer step hooks that count steps and write the LR (lightning_clr/_writer.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_clr import cyclic_lr
from lightning_clr.engine._plan import CyclePlan
from lightning_clr.engine._writer import ScheduleWriter, hookable

PLAN = CyclePlan(base_lr=(0.1,), max_lr=(0.5,), group_counts=(1,), step_size_up=2, step_size_down=2)


def _sgd() -> torch.optim.SGD:
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    return torch.optim.SGD([p], lr=1.0)


class _Wrapper:
    """The shape of DeepSpeed's ZeRO and fp16 optimizers (DeepSpeed is not installed here): not a torch
    Optimizer, it holds one as ``.optimizer``, shares its param groups and skips its step on an fp16 overflow."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.optimizer = inner

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def step(self, overflow: bool = False) -> None:
        if not overflow:
            self.optimizer.step()


def test_steps_are_counted_by_the_optimizers_hooks_and_no_longer_after_stop() -> None:
    opt = _sgd()
    w = ScheduleWriter(PLAN, [opt], steps=[0])
    w.start()
    for k in range(1, 6):
        opt.step()
        assert w.steps == [k]
        assert opt.param_groups[0]["lr"] == pytest.approx(cyclic_lr(k, base_lr=0.1, max_lr=0.5, step_size_up=2))
    w.stop()
    opt.step()
    assert w.steps == [5] and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_start_twice_registers_the_hooks_once() -> None:
    opt = _sgd()
    w = ScheduleWriter(PLAN, [opt], steps=[0])
    w.start()
    w.start()
    opt.step()
    assert w.steps == [1] and len(opt._optimizer_step_post_hooks) == 1


def test_a_wrapper_is_counted_through_the_torch_optimizer_it_wraps() -> None:
    inner = _sgd()
    wrapper = _Wrapper(inner)
    assert hookable(wrapper) is inner
    w = ScheduleWriter(PLAN, [wrapper], steps=[0])  # type: ignore[list-item]
    w.start()
    wrapper.step()
    wrapper.step(overflow=True)  # the wrapper skipped its inner step: no step happened
    wrapper.step()
    assert w.steps == [2]
    assert wrapper.param_groups[0]["lr"] == pytest.approx(cyclic_lr(2, base_lr=0.1, max_lr=0.5, step_size_up=2))


def test_an_optimizer_without_torchs_hooks_is_refused_by_name_before_any_value_is_written() -> None:
    class Duck:
        param_groups = [{"lr": 1.0, "params": []}]

    w = ScheduleWriter(PLAN, [Duck()], steps=[0])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"the optimizer Duck is not a torch.optim.Optimizer"):
        w.start()
    assert Duck.param_groups[0]["lr"] == 1.0
