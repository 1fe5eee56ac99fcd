"""The divergence guard during training: watches the loss each step already computed, and on a divergence rolls
the model, the optimizer(s) and the GradScaler back to the last good state, lowers both bounds of every param
group by ``backoff_factor`` (a plan with a smaller ``lr_scale``), and lets the fit go on.

Cost on a step where nothing happens: the step's detached loss tensor is appended to a Python list (a device-side
buffer: no host-device sync, no kernel, no collective). Every ``check_every`` optimizer steps, and at each cycle
trough, the list is stacked and read once (one sync); under DDP the ranks' windows are first averaged by one
``all_reduce`` of those few numbers, so every rank judges the same values with the same pure rule
(:class:`~lightning_clr.engine._divergence.DivergenceRule`) and takes the same decision at the same step, with
no broadcast. A check at a trough that passes keeps that state as the last good one (:class:`GoodState`).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> good = GoodState([model], [opt])
    >>> good.capture()
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)
    >>> good.restore(); torch.equal(model.weight, good.saved_tensors()[0])
    True
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_clr._validation import ArgumentError
from lightning_clr.engine._divergence import DivergenceGuard, DivergenceRule
from lightning_clr.engine._plan import CyclePlan, _bad_state
from lightning_clr.engine._resolve import _fmt

__all__ = ["DivergenceError", "GoodState", "Guard", "check_state"]

METRIC_PREFIX = "clr_guard/"


class DivergenceError(RuntimeError):
    """The fit diverged more often than ``DivergenceGuard.max_backoffs`` allows. The model and optimizer were
    rolled back to the last good state before it was raised."""


def _copy_into(saved: Optional[torch.Tensor], tensor: torch.Tensor, device: Optional[torch.device]) -> torch.Tensor:
    """``tensor``'s value in ``saved`` when it fits (no new memory), else in a new copy (on ``device``)."""
    if saved is not None and saved.shape == tensor.shape and saved.dtype == tensor.dtype:
        saved.copy_(tensor.detach())
        return saved
    return tensor.detach().to(device or tensor.device, copy=True)


class GoodState:
    """One in-memory copy of the model's parameters and buffers, the optimizers' state and param-group keys, and
    the GradScaler's state; on the tensors' own device, or on ``device`` (``"cpu"``). :meth:`capture` reuses the
    copy's memory; :meth:`restore` writes back into the same tensors (the optimizer, DDP and user references stay
    valid). Gradients, RNG and the loop's progress are not part of it: the fit goes on from its current step."""

    def __init__(self, modules: list[torch.nn.Module], optimizers: list[Any], scaler: Any = None,
                 device: Optional[str] = None) -> None:
        seen: dict[int, torch.Tensor] = {}
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                seen.setdefault(id(t), t)
        self._live = list(seen.values())
        self._optimizers = optimizers
        self._scaler = scaler
        self._device = torch.device(device) if device else None
        self._tensors: list[Optional[torch.Tensor]] = [None] * len(self._live)
        self._states: list[dict[Any, dict[str, Any]]] = [{} for _ in optimizers]
        self._groups: list[list[dict[str, Any]]] = []
        self._scaler_state: dict[str, Any] = {}

    @torch.no_grad()
    def capture(self) -> None:
        self._tensors = [_copy_into(s, t, self._device) for s, t in zip(self._tensors, self._live)]
        for k, opt in enumerate(self._optimizers):
            old, new = self._states[k], {}
            for p, state in opt.state.items():
                kept = old.get(p, {})
                new[p] = {key: _copy_into(kept.get(key), v, self._device) if isinstance(v, torch.Tensor)
                          else copy.deepcopy(v) for key, v in state.items()}
            self._states[k] = new
        self._groups = [[{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
                        for opt in self._optimizers]
        if self._scaler is not None:
            self._scaler_state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                  for k, v in vars(self._scaler).items()}

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in zip(self._live, self._tensors):
            if saved is not None:
                tensor.copy_(saved)
        for opt, saved_state, saved_groups in zip(self._optimizers, self._states, self._groups):
            for p in [p for p in opt.state if p not in saved_state]:
                del opt.state[p]
            for p, saved in saved_state.items():
                current = opt.state[p]
                for key in [key for key in current if key not in saved]:
                    del current[key]
                for key, value in saved.items():
                    now = current.get(key)
                    if isinstance(value, torch.Tensor):
                        if isinstance(now, torch.Tensor) and now.shape == value.shape and now.dtype == value.dtype:
                            now.copy_(value)
                        else:
                            current[key] = value.to(p.device if self._device else value.device, copy=True)
                    else:
                        current[key] = copy.deepcopy(value)
            for group, saved_group in zip(opt.param_groups, saved_groups):
                group.update(copy.deepcopy(saved_group))
        if self._scaler is not None and self._scaler_state:
            vars(self._scaler).update({k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                       for k, v in self._scaler_state.items()})

    def saved_tensors(self) -> list[Optional[torch.Tensor]]:
        """The saved parameters and buffers, in the order of the model's (for tests)."""
        return list(self._tensors)


def _loss_of(outputs: Any) -> Optional[torch.Tensor]:
    """The loss the step computed: ``outputs["loss"]`` (Lightning's batch output) or a tensor; else ``None``.
    Called once per step: the common case (a dict holding a 0-d tensor) takes the fewest calls."""
    loss = outputs.get("loss") if type(outputs) is dict or isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, torch.Tensor):
        return None
    if loss.requires_grad:
        loss = loss.detach()
    if loss.dim() == 0:
        return loss
    return loss.reshape(()) if loss.numel() == 1 else None


class Guard:
    """The guard of one fit: call :meth:`after_batch` at each train batch end with the batch output and the
    optimizer step count; it returns a new plan when it rolled the fit back, else ``None``."""

    def __init__(self, config: DivergenceGuard, plan: CyclePlan, state: Optional[dict[str, Any]] = None) -> None:
        self.config = config
        self.plan = plan
        self.rule = DivergenceRule(config.threshold)
        self._losses: list[torch.Tensor] = []  # this window's losses, 0-d tensors (from _loss_of)
        self._pending: list[float] = []  # this window's losses read from a checkpoint
        if state:  # checked when the checkpoint was loaded (check_state)
            self.rule.load(state["rule"])
            self._pending = [float(v) for v in state["pending"]]
        self._good: Optional[GoodState] = None
        self._good_levels = self.rule.state()
        self._next_check = 0
        self._watching: Optional[bool] = None

    def start(self, trainer: Any, optimizers: list[Any], step: int) -> None:
        """Keep the state at train start as the first good one; plan the first check."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        device = "cpu" if self.config.snapshot_on_cpu else None
        self._good = GoodState([trainer.lightning_module], optimizers, scaler, device)
        self._good.capture()
        self._good_levels = self.rule.state()  # the rule's levels when the good state was kept
        self._next_check = self._following(step)

    def _following(self, step: int) -> int:
        every, cycle = self.config.check_every, self.plan.cycle_length
        return min((step // every + 1) * every, (step // cycle + 1) * cycle)

    def after_batch(self, trainer: Any, outputs: Any, step: int) -> Optional[CyclePlan]:
        loss = _loss_of(outputs)
        if loss is None:
            if self._watching is None and not trainer.lightning_module.automatic_optimization:
                rank_zero_info("CyclicLearningRate: `training_step` returns no loss, so the divergence guard cannot"
                               " watch this fit (manual optimization: return the loss to let it watch).")
            self._watching = False if self._watching is None else self._watching
            return None
        self._watching = True
        self._losses.append(loss)
        if step < self._next_check:
            return None
        return self._check(trainer, step)

    def _check(self, trainer: Any, step: int) -> Optional[CyclePlan]:
        trough = self._next_check % self.plan.cycle_length == 0  # this check was due at a trough (low LR)
        reason = self.decide(step, int(getattr(trainer, "world_size", 1) or 1))
        if reason is None:
            if trough and self._good is not None and self.rule.calm:
                self._good.capture()
                self._good_levels = self.rule.state()
            return None
        return self._intervene(trainer, step, reason)

    def decide(self, step: int, world_size: int = 1) -> Optional[str]:
        """Read the window (averaged over the ranks: one all_reduce), judge it and start the next one; return
        why it diverged, or ``None``. Every rank judges the same numbers, so every rank decides alike."""
        pending, tensors = self._pending, self._losses
        self._pending, self._losses = [], []
        self._next_check = self._following(step)
        values = pending
        if tensors:
            window = torch.stack(tensors).float()
            if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(window, op=torch.distributed.ReduceOp.SUM)
                window = window / world_size
            values = pending + window.tolist()
        return self.rule.check(values)

    def _intervene(self, trainer: Any, step: int, reason: str) -> CyclePlan:
        plan, config = self.plan, self.config
        if self._good is not None:
            self._good.restore()
        self.rule.load(self._good_levels)  # the levels the good state had: not the ones reached since
        done = len(plan.interventions)
        if done >= config.max_backoffs:
            raise DivergenceError(
                f"CyclicLearningRate: the fit diverged at optimizer step {step} ({reason}) after {done} back-off(s)"
                f" of the bounds (guard.max_backoffs={config.max_backoffs}; now base_lr={_fmt(plan.effective_base_lr)},"
                f" max_lr={_fmt(plan.effective_max_lr)}). The model and optimizer are back in their last good state."
                " Lower the bounds (or check the data for bad samples) and fit again."
            )
        scale = plan.lr_scale * config.backoff_factor
        record = {"step": int(step), "reason": reason, "lr_scale": scale}
        self.plan = new = plan.replace(lr_scale=scale, interventions=(*plan.interventions, record))
        rank_zero_info(
            f"CyclicLearningRate guard: {reason} at optimizer step {step}; rolled back to the last good state and"
            f" lowered the bounds x{config.backoff_factor:g}: max_lr {_fmt(plan.effective_max_lr)} ->"
            f" {_fmt(new.effective_max_lr)}, base_lr {_fmt(plan.effective_base_lr)} -> {_fmt(new.effective_base_lr)}"
            f" (back-off {done + 1} of at most {config.max_backoffs})."
        )
        _log(trainer, step, plan, new)
        return new

    def state(self) -> dict[str, Any]:
        """The rule's levels and the losses of the window in progress (read now: a checkpoint is a rare event)."""
        pending = list(self._pending)
        if self._losses:
            pending += torch.stack(self._losses).float().tolist()
        return {"rule": self.rule.state(), "pending": pending}

    def release(self) -> None:
        """Free the last good state's memory (after the fit)."""
        self._good = None


def check_state(state: Any) -> Optional[dict[str, Any]]:
    """A checkpoint's guard state, checked (plain numbers only); a bad one raises the ``ValueError`` of a bad
    checkpoint state, naming the key, before any step."""
    if state is None:
        return None
    try:
        if not isinstance(state, dict) or set(state) != {"rule", "pending"}:
            raise ArgumentError("guard", state, "a dict with the keys 'pending' and 'rule'")
        DivergenceRule().load(state["rule"])
        pending = state["pending"]
        if not isinstance(pending, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in pending):
            raise ArgumentError("guard.pending", pending, "a list of numbers")
    except ArgumentError as err:
        raise _bad_state(err.argument, err.value, err.requirement) from None
    return state


def _log(trainer: Any, step: int, old: CyclePlan, new: CyclePlan) -> None:
    """One logged point per back-off, into every logger of the trainer (rank 0 writes)."""
    k = max(range(len(new.max_lr)), key=lambda i: new.max_lr[i])  # the group with the largest bound
    metrics = {"backoffs": float(len(new.interventions)), "step": float(step), "lr_scale": new.lr_scale,
               "old_base_lr": old.effective_base_lr[k], "old_max_lr": old.effective_max_lr[k],
               "new_base_lr": new.effective_base_lr[k], "new_max_lr": new.effective_max_lr[k]}
    for logger in getattr(trainer, "loggers", []):
        logger.log_metrics({METRIC_PREFIX + name: value for name, value in metrics.items()}, step=step)

