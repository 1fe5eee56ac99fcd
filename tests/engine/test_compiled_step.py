"""A compiled ``optimizer.step()`` with a tensor LR through a real Trainer: no recompile after the first compile
(issue 20, finding 6). The pattern is torch's recipe "compiling_optimizer_lr_scheduler": the LightningModule
compiles a function that calls ``opt.step()`` (inductor, on the CPU) and calls it from ``optimizer_step``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import TinyModel, loader, trainer

from lightning_clr import CyclicLearningRate, RangeTestConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class CompiledStep(TinyModel):
    """Adam with a tensor LR and tensor betas; ``optimizer_step`` runs the closure, then the compiled step."""

    def __init__(self, compiled: bool) -> None:
        super().__init__(log_loss=False)
        self.compiled = compiled
        self.lrs: list[float] = []

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=torch.tensor(0.01), betas=(torch.tensor(0.9),
                                                                                   torch.tensor(0.999)))

        def step() -> None:
            opt.step()

        self.step_fn = torch.compile(step) if self.compiled else step
        return opt

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer_closure()  # forward and backward, as Lightning's default optimizer_step runs them
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))
        self.step_fn()


def _fit(compiled: bool) -> tuple[CompiledStep, CyclicLearningRate]:
    torch.manual_seed(0)
    model = CompiledStep(compiled)
    config = RangeTestConfig(num_steps=12, min_lr=1e-4, max_lr=1.0, save=False, progress_bar=False)
    clr = CyclicLearningRate(step_size_up=2, cycle_momentum=True, range_test=config)
    trainer(callbacks=[clr], max_epochs=3).fit(model, loader(n=32))
    return model, clr


@pytest.mark.filterwarnings("ignore:LR range test")
def test_a_compiled_step_with_a_tensor_lr_compiles_once_through_the_range_test_and_the_cycles() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters, guard_failures

    eager, _ = _fit(compiled=False)
    torch._dynamo.reset()  # clears guard_failures and the counters
    try:
        model, clr = _fit(compiled=True)
        recompiles = {getattr(code, "co_name", str(code)): reasons for code, reasons in guard_failures.items()}
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert clr.steps == [12] and len(model.lrs) == 12 and len(set(model.lrs)) > 3  # three cycles of 4 steps
    assert recompiles == {}, recompiles  # not on the LR, not on the betas, not on the hooks
    assert graphs >= 1
    assert model.lrs == pytest.approx(eager.lrs, rel=1e-6)  # the compiled step reads each step's LR
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
