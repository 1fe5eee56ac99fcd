"""An in-memory snapshot of everything a few training steps change, restored bitwise and in place.

Covers: parameters, their ``.grad`` and buffers (copied back into the same tensors, so the optimizer,
DDP and user references stay valid); each submodule's train/eval flag; torchmetrics states inside the
model; optimizer state and param-group keys (keys added during the test, like ``initial_lr``, are
removed; a tensor LR or tensor betas get their values back in place, as the same tensors); LR scheduler
states; the AMP GradScaler; the RNG states (torch, CUDA, numpy, python, and any ``torch.Generator`` of the
train dataloaders' samplers); the fit loop's progress counters. No file is written, so nothing needs a
shared filesystem.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> snap = Snapshot.capture(model, optimizers=[])
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)
    >>> snap.restore()
"""

from __future__ import annotations

import copy
import random
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric

from lightning_clr._lightning import LOOP_STATE, loop_classes, metric_state_keys

__all__ = ["Snapshot"]


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


def _put(target: dict, key: Any, saved: Any) -> None:
    """Write ``saved`` back under ``target[key]``, into the same tensors when shapes and dtypes match (a tensor LR
    or tensor betas stay the objects a compiled or CUDA-graph-captured ``optimizer.step()`` reads)."""
    current = target.get(key)
    value = _into(current, saved)
    if value is not current:
        target[key] = value


def _into(current: Any, saved: Any) -> Any:
    if (
        isinstance(saved, torch.Tensor)
        and isinstance(current, torch.Tensor)
        and current.shape == saved.shape
        and current.dtype == saved.dtype
        and current.device == saved.device
    ):
        with torch.no_grad():
            current.copy_(saved)
        return current
    if isinstance(saved, tuple) and isinstance(current, tuple) and len(saved) == len(current) and saved:
        values = tuple(_into(c, s) for c, s in zip(current, saved))
        return current if all(v is c for v, c in zip(values, current)) else values
    return _clone(saved)


def _progress_objects(loop: Any, classes: tuple[type, ...]) -> Iterable[Any]:
    """All progress trackers of a Lightning loop tree (``classes``: :func:`lightning_clr._lightning.loop_classes`)."""
    progress, containers = classes[1], (classes[0], *classes[2:])
    for value in vars(loop).values():
        if isinstance(value, progress):
            yield value
        elif isinstance(value, containers):
            yield from _progress_objects(value, classes)


class _Tensors:
    """Parameters and buffers, copied back into the same tensors; and the parameters' ``.grad``."""

    def __init__(self, module: nn.Module) -> None:
        unique = {id(t): t for t in [*module.parameters(), *module.buffers()]}
        self.tensors = [(t, t.detach().clone()) for t in unique.values()]
        self.grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in module.parameters()]

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, saved in self.tensors:
                if tensor.shape == saved.shape and tensor.dtype == saved.dtype:
                    tensor.copy_(saved)
                else:  # a parameter was resized or cast: put the data object back
                    tensor.data = saved.clone()
            for param, grad in self.grads:
                if grad is None:
                    param.grad = None
                elif param.grad is not None and param.grad.shape == grad.shape and param.grad.dtype == grad.dtype:
                    param.grad.copy_(grad)
                else:
                    param.grad = grad.clone()


class _TrainFlags:
    """Each submodule's train/eval flag."""

    def __init__(self, module: nn.Module) -> None:
        self.flags = [(m, m.training) for m in module.modules()]

    def restore(self) -> None:
        for m, flag in self.flags:
            m.training = flag


class _MetricState:
    """A torchmetrics ``Metric``'s state (instance attributes only: some names are read-only properties)."""

    def __init__(self, metric: Metric) -> None:
        state = vars(metric)
        self.metric = metric
        self.values = {k: _clone(state[k]) for k in metric_state_keys(metric) if k in state}

    def restore(self) -> None:
        for k, v in self.values.items():
            setattr(self.metric, k, _clone(v))


class _OptimizerState:
    """An optimizer's per-parameter state and param-group keys; keys and states added since are removed."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.state = {p: {k: _clone(v) for k, v in s.items()} for p, s in optimizer.state.items()}
        self.groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    def restore(self) -> None:
        opt = self.optimizer
        for p in [p for p in opt.state if p not in self.state]:
            del opt.state[p]
        for p, saved in self.state.items():
            current = opt.state[p]
            for k in [k for k in current if k not in saved]:
                del current[k]
            for k, v in saved.items():
                _put(current, k, v)
        for group, saved_group in zip(opt.param_groups, self.groups):
            for k in [k for k in group if k != "params" and k not in saved_group]:
                del group[k]
            for k, v in saved_group.items():
                _put(group, k, v)


class _StateDict:
    """An object with ``state_dict``/``load_state_dict``: an LR scheduler, a loop's progress tracker."""

    def __init__(self, owner: Any) -> None:
        self.owner, self.saved = owner, copy.deepcopy(owner.state_dict())

    def restore(self) -> None:
        self.owner.load_state_dict(copy.deepcopy(self.saved))  # CyclicLR.load_state_dict mutates its argument


class _Vars:
    """Every instance attribute of an object (the AMP GradScaler)."""

    def __init__(self, owner: Any) -> None:
        self.owner, self.saved = owner, {k: _clone(v) for k, v in vars(owner).items()}

    def restore(self) -> None:
        vars(self.owner).clear()
        vars(self.owner).update({k: _clone(v) for k, v in self.saved.items()})


class _Attribute:
    """One attribute of an object (a loop's private counters and flags)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.value = owner, name, getattr(owner, name)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.value)


class _RandomState:
    """The global RNGs (torch, CUDA when initialized, numpy, python) and the given ``torch.Generator`` objects."""

    def __init__(self, generators: Iterable[torch.Generator]) -> None:
        self.rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.rng["cuda"] = torch.cuda.get_rng_state_all()
        unique = {id(g): g for g in generators}
        self.generators = [(g, g.get_state()) for g in unique.values()]

    def restore(self) -> None:
        torch.set_rng_state(self.rng["torch"])
        np.random.set_state(self.rng["numpy"])
        random.setstate(self.rng["python"])
        if "cuda" in self.rng:
            torch.cuda.set_rng_state_all(self.rng["cuda"])
        for generator, state in self.generators:
            generator.set_state(state)


def _loop_records(fit_loop: Any) -> list[Any]:
    """The fit loop tree's progress trackers, and its private counters and flags (``LOOP_STATE``)."""
    records: list[Any] = [_StateDict(p) for p in _progress_objects(fit_loop, loop_classes(fit_loop))]
    for path, name in LOOP_STATE:
        owner = getattr(fit_loop, path) if path else fit_loop
        records.append(_Attribute(owner, name))
    return records


class Snapshot:
    """State captured by :meth:`capture`, one record per kind; :meth:`restore` puts it back, in the order of
    capture (and can be called repeatedly)."""

    def __init__(self, records: list[Any]) -> None:
        self.records = records

    @classmethod
    def capture(
        cls,
        module: nn.Module,
        optimizers: Iterable[Any],
        schedulers: Iterable[Any] = (),
        scaler: Any = None,
        generators: Iterable[torch.Generator] = (),
        fit_loop: Any = None,
    ) -> Snapshot:
        records: list[Any] = [_Tensors(module), _TrainFlags(module)]
        records += [_MetricState(m) for m in module.modules() if isinstance(m, Metric)]
        records += [_OptimizerState(opt) for opt in optimizers]
        records += [_StateDict(s) for s in schedulers]
        records += [_Vars(scaler)] if scaler is not None else []
        records.append(_RandomState(generators))
        records += _loop_records(fit_loop) if fit_loop is not None else []
        return cls(records)

    def restore(self) -> None:
        """Put every captured value back, bitwise, into the same objects where possible."""
        for record in self.records:
            record.restore()
