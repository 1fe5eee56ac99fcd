"""The in-memory snapshot: on its own, and through a real fit with BatchNorm buffers."""

from __future__ import annotations

import copy
from typing import Any

import torch
from helpers import TinyModel, loader, trainer
from range_test_helpers import Probe, assert_same, cfg
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


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



# ---------------------------------------------------------------- buffers, through a real fit
class BatchNormModel(TinyModel):
    """BatchNorm's running statistics and batch counter are buffers that every training forward changes."""

    def __init__(self) -> None:
        super().__init__(optimizer="adam", lr=0.01)
        self.bn = nn.BatchNorm1d(4)
        self.tracked_in_sweep: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.layer(x))))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.tracked_in_sweep.append(int(self.bn.num_batches_tracked))


def test_a_tensor_lr_and_tensor_betas_are_restored_into_the_same_tensors() -> None:
    # torch's own Optimizer.load_state_dict puts deep copies in the groups (new tensor objects); a compiled or
    # CUDA-graph-captured step keeps reading the old ones, so the snapshot writes the values back in place.
    from lightning_clr.range_test._snapshot import Snapshot

    model = nn.Linear(4, 2)
    lr, betas = torch.tensor(0.01), (torch.tensor(0.9), torch.tensor(0.999))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    tuple_before = opt.param_groups[0]["betas"]
    snap = Snapshot.capture(model, [opt])
    lr.fill_(3.0)
    betas[0].fill_(0.5)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    snap.restore()
    group = opt.param_groups[0]
    assert group["lr"] is lr and group["betas"] is tuple_before
    assert group["betas"][0] is betas[0] and group["betas"][1] is betas[1]
    assert float(lr) == torch.tensor(0.01).item() and float(betas[0]) == torch.tensor(0.9).item()
    assert not opt.state  # the step's state is gone again
    float_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = Snapshot.capture(model, [float_opt])
    float_opt.param_groups[0]["lr"] = 2.0
    snap.restore()
    assert type(float_opt.param_groups[0]["lr"]) is float and float_opt.param_groups[0]["lr"] == 0.1


def test_batchnorm_buffers_are_restored_bitwise() -> None:
    torch.manual_seed(0)
    model = BatchNormModel()
    probe = Probe(cfg(num_steps=15), hook="on_train_batch_start", at_batch=2)
    trainer(callbacks=[probe], max_epochs=1).fit(model, loader(shuffle=True))
    assert probe.error is None and probe.result is not None
    before, after = probe.before["params"], probe.after["params"]
    assert int(before["bn.num_batches_tracked"]) == 2  # two real steps ran before the test
    # the sweep really moved the buffers (15 more batches), so restoring them is what makes them equal
    assert model.tracked_in_sweep[2:17] == list(range(3, 18))
    for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["bn.running_mean"], torch.zeros(4))
    assert_same(probe.before, probe.after)
