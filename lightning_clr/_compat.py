"""Which Lightning package the user's objects come from: ``lightning.pytorch`` or the standalone ``pytorch_lightning``.

The two packages ship the same code under two names, so their classes are distinct: a ``pytorch_lightning``
LightningModule is refused by a ``lightning.pytorch.Trainer`` (``TypeError: `model` must be a
`LightningModule```), and a ``lightning.pytorch.Callback`` is not a ``pytorch_lightning.Callback`` for an
``isinstance`` or ``issubclass`` check (such as the one jsonargparse runs for ``--trainer.callbacks`` in
``pytorch_lightning.cli.LightningCLI``). A ``pytorch_lightning.Trainer`` itself calls callback hooks by name,
so it runs our callbacks as they are.

- :func:`lightning_package` names the package of a model, trainer, callback or class (the tuner builds its
  trials' Trainers from the package of the user's model);
- :func:`callback_bases` gives the base classes for a callback that is a ``Callback`` of both packages, so
  that ``class CyclicLearningRate(*callback_bases())`` passes either package's checks.

Example:
    >>> import lightning.pytorch as pl
    >>> lightning_package(pl.Trainer).__name__
    'lightning.pytorch'
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

import lightning_utilities.core.rank_zero as shared

__all__ = ["callback_bases", "lightning_package"]


def lightning_package(obj: Any) -> ModuleType:
    """``pytorch_lightning`` if ``obj`` (an instance or a class) derives from a class of the standalone package,
    else ``lightning.pytorch`` (also for objects of neither package, such as a factory function).

    Example:
        >>> import pytorch_lightning
        >>> lightning_package(pytorch_lightning.LightningModule()).__name__
        'pytorch_lightning'
    """
    cls = obj if isinstance(obj, type) else type(obj)
    for base in cls.__mro__:
        if base.__module__ == "pytorch_lightning" or base.__module__.startswith("pytorch_lightning."):
            return importlib.import_module("pytorch_lightning")
    return importlib.import_module("lightning.pytorch")


@functools.cache
def callback_bases() -> tuple[type, ...]:
    """``(lightning.pytorch.Callback, pytorch_lightning.Callback)`` where the standalone package is installed,
    else ``(lightning.pytorch.Callback,)``: the bases of a callback that either package's Trainer and
    LightningCLI accept. Both bases define only empty hooks and the same ``state_key``, so their MRO order does
    not matter; a subclass's hooks come first. ``pytorch_lightning`` is imported only if it is installed.

    Example:
        >>> import lightning.pytorch as pl
        >>> class Recorder(*callback_bases()):
        ...     pass
        >>> issubclass(Recorder, pl.Callback)
        True
    """
    bases = [importlib.import_module("lightning.pytorch").Callback]
    if importlib.util.find_spec("pytorch_lightning") is not None:
        bases.append(_import_quietly("pytorch_lightning").Callback)
    return tuple(bases)


def _import_quietly(name: str) -> ModuleType:
    """Import ``name`` without moving Lightning's shared rank-zero logger.

    ``lightning_utilities`` keeps ONE module-level logger for ``rank_zero_info``/``rank_zero_warn``, and each of
    ``lightning.pytorch`` and ``pytorch_lightning`` points it at its own logger when imported. Importing
    ``pytorch_lightning`` here would therefore re-route every message of the user's ``lightning.pytorch``
    Trainer to the ``pytorch_lightning.utilities.rank_zero`` logger, and break their logging configuration
    (``logging.getLogger("lightning.pytorch").setLevel(...)``). So the logger is put back as it was.
    """
    if name in sys.modules:
        return sys.modules[name]
    previous = shared.log
    try:
        return importlib.import_module(name)
    finally:
        shared.log = previous
