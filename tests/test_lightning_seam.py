"""The canary of ``lightning_clr._lightning``: every function of the seam to Lightning's, torch's and
torchmetrics' private members, called for real on the installed versions (the floors job runs it on the lowest
declared ones). A release that renames or removes a member fails here, by name, before it fails in a fit."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyModel, loader, trainer
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torchmetrics.classification import MulticlassAccuracy

from lightning_clr import _lightning as seam
from lightning_clr.range_test._snapshot import _progress_objects


def test_every_seam_function_is_tested_here() -> None:
    source = open(__file__, encoding="utf-8").read()
    functions = [name for name in seam.__all__ if callable(getattr(seam, name)) and name[0].islower()]
    untested = [name for name in functions if f"seam.{name}(" not in source]
    assert not untested, untested


class _Probe(pl.Callback):
    """Calls the fit-time seams from inside a real fit, where the members exist."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        combined = seam.combined_loader(trainer)
        self.seen["combined"] = combined
        self.seen["iterator"] = seam.loader_iterator(combined)
        seam.set_loader_iterator(combined, self.seen["iterator"])  # puts back what it read
        self.seen["iterator_after"] = seam.loader_iterator(combined)
        connector, notifier = seam.sigterm_notifier(trainer)
        self.seen["connector"], self.seen["notifier"] = connector, notifier
        self.seen["handler"] = signal.getsignal(signal.SIGTERM)
        classes = seam.loop_classes(trainer.fit_loop)
        self.seen["progress"] = list(_progress_objects(trainer.fit_loop, classes))
        self.seen["loop_state"] = {
            (path, name): getattr(getattr(trainer.fit_loop, path) if path else trainer.fit_loop, name)
            for path, name in seam.LOOP_STATE
        }
        self.seen["batch"] = seam.on_before_batch_transfer(pl_module, (torch.ones(2, 8), torch.zeros(2, 1)))


class _Doubling(TinyModel):
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        return 2 * x, y


def test_the_fit_loop_seams_inside_a_real_fit() -> None:
    probe = _Probe()
    trainer(callbacks=[probe], limit_train_batches=2).fit(_Doubling(), loader())
    seen = probe.seen
    assert seen["combined"] is not None and hasattr(seen["combined"], "flattened")
    assert seen["iterator"] is not None and seen["iterator_after"] is seen["iterator"]
    assert seen["connector"].received_sigterm is False and callable(seen["notifier"])
    assert seen["notifier"] in getattr(seen["handler"], "signal_handlers", [seen["notifier"]])
    assert len(seen["progress"]) >= 4  # the fit loop's epoch progress, the epoch loop's batch progress, ...
    assert all(hasattr(p, "state_dict") and hasattr(p, "load_state_dict") for p in seen["progress"])
    assert seen["loop_state"][("epoch_loop", "_batches_that_stepped")] == 0
    assert isinstance(seen["loop_state"][("", "_restarting")], bool)
    assert torch.equal(seen["batch"][0], 2 * torch.ones(2, 8))  # the model's hook ran


def test_the_mock_optimizer_of_a_model_without_optimizers() -> None:
    class NoOptimizer(TinyModel):
        def configure_optimizers(self) -> Any:
            return None

    fit = trainer(limit_train_batches=1)
    with pytest.warns(UserWarning, match="optimizer"):
        fit.fit(NoOptimizer(), loader())
    assert [seam.is_mock_optimizer(opt) for opt in fit.optimizers] == [True]
    assert not seam.is_mock_optimizer(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1))


def test_strategy_start_method_and_the_process_group_teardown() -> None:
    assert seam.start_method(DDPStrategy(start_method="spawn")) == "spawn"
    assert seam.start_method(DDPStrategy()) == "popen"
    assert seam.start_method(SingleDeviceStrategy(device=torch.device("cpu"))) is None
    destroy = seam.destroy_dist_connection()
    assert not torch.distributed.is_initialized()
    destroy()  # no process group: nothing to destroy, no error


def test_optimizer_step_hooks_are_the_dicts_torch_calls() -> None:
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    calls: list[str] = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    hooks = seam.optimizer_step_hooks(optimizer)
    assert [len(d) for d in hooks.values()] == [1, 1]
    optimizer.step()
    assert calls == ["pre", "post"]
    for name, value in hooks.items():  # emptied, as the range test's sweep does: torch calls no hook
        setattr(optimizer, name, type(value)())
    optimizer.step()
    assert calls == ["pre", "post"]


def test_metric_state_keys_are_what_an_update_changes() -> None:
    metric = MulticlassAccuracy(num_classes=2)
    keys = seam.metric_state_keys(metric)
    assert set(seam.METRIC_STATE) <= set(keys) and len(keys) > len(seam.METRIC_STATE)
    before = {k: _copy(vars(metric).get(k)) for k in keys}  # copies: an update may add into the same tensor
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    changed = [k for k in keys if not _same(vars(metric).get(k), before[k])]
    assert "_update_count" in changed and len(changed) >= 2  # the counter and a declared state


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    return list(value) if isinstance(value, list) else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_the_lightning_cli_seams(tmp_path: Any) -> None:
    pytest.importorskip("jsonargparse")
    from lightning.pytorch.cli import LightningCLI

    args = ["--trainer.max_epochs", "3", "--trainer.logger", "false", "--optimizer", "torch.optim.Adam",
            "--optimizer.lr", "0.25"]
    cli = LightningCLI(TinyModel, run=False, args=args, save_config_callback=None)
    assert seam.cli_get(cli, cli.config, "trainer")["max_epochs"] == 3
    assert seam.cli_get(cli, cli.config, "no_such_key", default="fallback") == "fallback"
    cli.model = TinyModel(lr=0.001)
    seam.add_configure_optimizers(cli, None)
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.25


def test_a_missing_member_raises_a_named_error() -> None:
    with pytest.raises(seam.PrivateMemberError, match=r"`trainer.fit_loop._combined_loader`.*torch \d"):
        seam.combined_loader(SimpleNamespace(fit_loop=object()))
    with pytest.raises(seam.PrivateMemberError, match="_sigterm_notifier_fn"):
        seam.sigterm_notifier(SimpleNamespace(_signal_connector=object()))
