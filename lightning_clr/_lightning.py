"""The one seam to what Lightning, torch and torchmetrics do not make public.

Every private member the package touches is reached through a function here, and nowhere else. When an installed
version lacks one, the function raises :class:`PrivateMemberError` naming the member and the installed versions,
instead of a silent fallback that would change what the package does; ``tests/test_lightning_seam.py`` calls
every function on the installed versions (and the floors job on the lowest declared ones), so an upgrade that
removes one fails there first.

A class is looked up in the Lightning package of the object at hand (``lightning.pytorch`` or the standalone
``pytorch_lightning``, see :mod:`lightning_clr._compat`).

Example:
    >>> import torch
    >>> optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    >>> sorted(optimizer_step_hooks(optimizer))
    ['_optimizer_step_post_hooks', '_optimizer_step_pre_hooks']
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from typing import Any, Callable, Optional

from lightning_clr._compat import lightning_package

__all__ = [
    "LOOP_STATE",
    "METRIC_STATE",
    "PrivateMemberError",
    "add_configure_optimizers",
    "cli_get",
    "combined_loader",
    "destroy_dist_connection",
    "is_mock_optimizer",
    "loader_iterator",
    "loop_classes",
    "metric_state_keys",
    "on_before_batch_transfer",
    "optimizer_step_hooks",
    "set_loader_iterator",
    "sigterm_notifier",
    "start_method",
]

# (loop attribute of the fit loop, or "" for the fit loop itself; private attribute) that the range test saves
# and puts back, besides the progress trackers.
LOOP_STATE: tuple[tuple[str, str], ...] = (
    ("", "_restarting"),
    ("epoch_loop", "_batches_that_stepped"),
    ("epoch_loop", "_restarting"),
)
# A torchmetrics Metric's instance attributes besides its declared states (``_defaults``).
METRIC_STATE: tuple[str, ...] = ("_update_count", "_computed", "_forward_cache")
_STEP_HOOKS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")  # torch 2.0+: one OrderedDict each


class PrivateMemberError(RuntimeError):
    """A private member of Lightning, torch, torchmetrics or Optuna that lightning_clr relies on is missing.

    Example:
        >>> str(PrivateMemberError("trainer._signal_connector"))[:60]
        'lightning_clr relies on `trainer._signal_connector`, which t'
    """

    def __init__(self, member: str) -> None:
        self.member = member
        super().__init__(
            f"lightning_clr relies on `{member}`, which the installed versions do not have ({_versions()}):"
            " this combination is not supported; please report it with these versions."
        )


def _versions() -> str:
    found = []
    for name in ("torch", "lightning", "pytorch_lightning", "torchmetrics", "optuna"):
        try:
            found.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            continue
    return ", ".join(found)


def _attr(obj: Any, name: str, owner: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise PrivateMemberError(f"{owner}.{name}") from None


def _member(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise PrivateMemberError(f"{module}.{name}") from None


def _package(obj: Any) -> str:
    return lightning_package(obj).__name__


# ---------------------------------------------------------------- the fit loop (range test: snapshot, batches)
def loop_classes(fit_loop: Any) -> tuple[type, ...]:
    """``(loop base, progress base, optimization loops...)`` of ``fit_loop``'s package: the classes whose
    instances hold the loop tree's progress trackers.

    Example:
        >>> import lightning.pytorch as pl
        >>> [c.__name__ for c in loop_classes(pl.Trainer(logger=False).fit_loop)]
        ['_Loop', '_BaseProgress', '_AutomaticOptimization', '_ManualOptimization']
    """
    package = _package(fit_loop)
    return (
        _member(f"{package}.loops", "_Loop"),
        _member(f"{package}.loops.progress", "_BaseProgress"),
        _member(f"{package}.loops.optimization", "_AutomaticOptimization"),
        _member(f"{package}.loops.optimization", "_ManualOptimization"),
    )


def combined_loader(trainer: Any) -> Any:
    """``trainer.fit_loop._combined_loader``: the fit's train ``CombinedLoader`` (``None`` before the fit sets
    it up)."""
    return _attr(trainer.fit_loop, "_combined_loader", "trainer.fit_loop")


def loader_iterator(combined: Any) -> Any:
    """``CombinedLoader._iterator``: the iterator the fit loop is in the middle of (``None`` before ``iter``)."""
    return _attr(combined, "_iterator", "CombinedLoader")


def set_loader_iterator(combined: Any, iterator: Any) -> None:
    """Put back the ``CombinedLoader._iterator`` that :func:`loader_iterator` read."""
    _attr(combined, "_iterator", "CombinedLoader")
    combined._iterator = iterator


def on_before_batch_transfer(pl_module: Any, batch: Any) -> Any:
    """``pl_module._on_before_batch_transfer(batch, dataloader_idx=0)``, as the fit loop calls it: the model's
    and the datamodule's ``on_before_batch_transfer`` hooks."""
    return _attr(pl_module, "_on_before_batch_transfer", "LightningModule")(batch, dataloader_idx=0)


def is_mock_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is Lightning's ``_MockOptimizer``, the stand-in of a model without optimizers."""
    return isinstance(optimizer, _member(f"{_package(optimizer)}.core.optimizer", "_MockOptimizer"))


# ---------------------------------------------------------------- signals, strategies, the process group
def sigterm_notifier(trainer: Any) -> tuple[Any, Callable[..., Any]]:
    """``(trainer._signal_connector, its _sigterm_notifier_fn)``: the SIGTERM handler that sets
    ``trainer.received_sigterm`` (and, under DDP, broadcasts from inside the handler)."""
    connector = _attr(trainer, "_signal_connector", "trainer")
    return connector, _attr(connector, "_sigterm_notifier_fn", "trainer._signal_connector")


def start_method(strategy: Any) -> Optional[str]:
    """A DDP strategy's ``_start_method`` (``"popen"``, ``"spawn"``, ``"fork"``, ``"forkserver"``); ``None`` for
    a strategy of another kind.

    Example:
        >>> from lightning.pytorch.strategies import DDPStrategy
        >>> start_method(DDPStrategy(start_method="spawn"))
        'spawn'
    """
    ddp = _member(f"{_package(strategy)}.strategies", "DDPStrategy")
    return _attr(strategy, "_start_method", "DDPStrategy") if isinstance(strategy, ddp) else None


def destroy_dist_connection() -> Callable[[], None]:
    """``lightning.fabric.utilities.distributed._destroy_dist_connection``: destroys torch.distributed's process
    group if there is one."""
    return _member("lightning.fabric.utilities.distributed", "_destroy_dist_connection")


# ---------------------------------------------------------------- torch optimizers, torchmetrics
def optimizer_step_hooks(optimizer: Any) -> dict[str, OrderedDict]:
    """torch's per-optimizer step hooks, ``{"_optimizer_step_pre_hooks": ..., "_optimizer_step_post_hooks": ...}``:
    the ordered dicts themselves, which the range test swaps for empty ones during its sweep."""
    return {name: _attr(optimizer, name, "torch.optim.Optimizer") for name in _STEP_HOOKS}


def metric_state_keys(metric: Any) -> list[str]:
    """A torchmetrics ``Metric``'s state attributes: its declared states (``_defaults``) and ``METRIC_STATE``."""
    return [*_attr(metric, "_defaults", "torchmetrics.Metric"), *METRIC_STATE]


# ---------------------------------------------------------------- LightningCLI (the lightning-clr command)
def cli_get(cli: Any, config: Any, key: str, default: Any = None) -> Any:
    """``LightningCLI._get``: ``key`` of the current subcommand's ``config``."""
    return _attr(cli, "_get", "LightningCLI")(config, key, default=default)


def add_configure_optimizers(cli: Any, subcommand: Optional[str]) -> None:
    """``LightningCLI._add_configure_optimizers_method_to_model``: give ``cli.model`` the ``configure_optimizers``
    that ``--optimizer`` and ``--lr_scheduler`` describe."""
    _attr(cli, "_add_configure_optimizers_method_to_model", "LightningCLI")(subcommand)
