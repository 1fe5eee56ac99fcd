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
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

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


def _progress_objects(loop: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """All progress trackers of a Lightning loop tree, by attribute path."""
    from lightning.pytorch.loops import _Loop
    from lightning.pytorch.loops.progress import _BaseProgress

    for name, value in vars(loop).items():
        if isinstance(value, _BaseProgress):
            yield prefix + name, value
        elif isinstance(value, _Loop) or type(value).__name__ in ("_AutomaticOptimization", "_ManualOptimization"):
            yield from _progress_objects(value, prefix + name + ".")


class Snapshot:
    """State captured by :meth:`capture`; :meth:`restore` puts it back (and can be called repeatedly)."""

    def __init__(self) -> None:
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._grads: list[tuple[nn.Parameter, Optional[torch.Tensor]]] = []
        self._training: list[tuple[nn.Module, bool]] = []
        self._metrics: list[tuple[Any, dict[str, Any]]] = []
        self._optimizers: list[tuple[Any, dict[Any, dict[str, Any]], list[dict[str, Any]]]] = []
        self._schedulers: list[tuple[Any, dict[str, Any]]] = []
        self._scaler: Optional[tuple[Any, dict[str, Any]]] = None
        self._rng: dict[str, Any] = {}
        self._generators: list[tuple[torch.Generator, torch.Tensor]] = []
        self._progress: list[tuple[Any, dict[str, Any]]] = []
        self._loop_attrs: list[tuple[Any, str, Any]] = []

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
        snap = cls()
        seen: set[int] = set()
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            snap._tensors.append((tensor, tensor.detach().clone()))
        snap._grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in module.parameters()]
        snap._training = [(m, m.training) for m in module.modules()]
        for m in module.modules():
            defaults = getattr(m, "_defaults", None)
            if isinstance(defaults, dict) and hasattr(m, "_update_count"):  # a torchmetrics Metric
                keys = [*defaults, "_update_count", "_computed", "_forward_cache"]
                state = vars(m)  # instance attributes only (some names are read-only properties)
                snap._metrics.append((m, {k: _clone(state[k]) for k in keys if k in state}))
        for opt in optimizers:
            state = {p: {k: _clone(v) for k, v in s.items()} for p, s in opt.state.items()}
            groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
            snap._optimizers.append((opt, state, groups))
        snap._schedulers = [(s, copy.deepcopy(s.state_dict())) for s in schedulers]
        if scaler is not None:
            snap._scaler = (scaler, {k: _clone(v) for k, v in vars(scaler).items()})
        snap._rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            snap._rng["cuda"] = torch.cuda.get_rng_state_all()
        unique = {id(g): g for g in generators}
        snap._generators = [(g, g.get_state()) for g in unique.values()]
        if fit_loop is not None:
            snap._progress = [(p, copy.deepcopy(p.state_dict())) for _, p in _progress_objects(fit_loop)]
            epoch_loop = getattr(fit_loop, "epoch_loop", None)
            for owner, attr in ((fit_loop, "_restarting"), (epoch_loop, "_batches_that_stepped"),
                                (epoch_loop, "_restarting")):
                if owner is not None and hasattr(owner, attr):
                    snap._loop_attrs.append((owner, attr, getattr(owner, attr)))
        return snap

    def restore(self) -> None:
        """Put every captured value back, bitwise, into the same objects where possible."""
        with torch.no_grad():
            for tensor, saved in self._tensors:
                if tensor.shape == saved.shape and tensor.dtype == saved.dtype:
                    tensor.copy_(saved)
                else:  # a parameter was resized or cast: put the data object back
                    tensor.data = saved.clone()
            for param, grad in self._grads:
                if grad is None:
                    param.grad = None
                elif param.grad is not None and param.grad.shape == grad.shape and param.grad.dtype == grad.dtype:
                    param.grad.copy_(grad)
                else:
                    param.grad = grad.clone()
        for m, flag in self._training:
            m.training = flag
        for metric, values in self._metrics:
            for k, v in values.items():
                setattr(metric, k, _clone(v))
        for opt, state, groups in self._optimizers:
            for p in [p for p in opt.state if p not in state]:
                del opt.state[p]
            for p, saved in state.items():
                current = opt.state[p]
                for k in [k for k in current if k not in saved]:
                    del current[k]
                for k, v in saved.items():
                    _put(current, k, v)
            for group, saved_group in zip(opt.param_groups, groups):
                for k in [k for k in group if k != "params" and k not in saved_group]:
                    del group[k]
                for k, v in saved_group.items():
                    _put(group, k, v)
        for scheduler, sd in self._schedulers:
            scheduler.load_state_dict(copy.deepcopy(sd))  # CyclicLR.load_state_dict mutates its argument
        if self._scaler is not None:
            scaler, values = self._scaler
            vars(scaler).clear()
            vars(scaler).update({k: _clone(v) for k, v in values.items()})
        torch.set_rng_state(self._rng["torch"])
        np.random.set_state(self._rng["numpy"])
        random.setstate(self._rng["python"])
        if "cuda" in self._rng:
            torch.cuda.set_rng_state_all(self._rng["cuda"])
        for generator, state in self._generators:
            generator.set_state(state)
        for progress, sd in self._progress:
            progress.load_state_dict(copy.deepcopy(sd))
        for owner, attr, value in self._loop_attrs:
            setattr(owner, attr, value)
