"""The ``CyclicLearningRate`` callback: Lightning glue around :mod:`lightning_clr.schedule`.

Data flows one way: the callback resolves the bounds (from the user, a checkpoint, or the range
test in :mod:`lightning_clr.range_test`), resolves the cycle length, and then sets
``lr = f(step)`` on the optimizer's param groups once per optimizer step.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer

from lightning_clr.range_test import RangeTestConfig, refuse_sharded
from lightning_clr.range_test._rules import DEFAULT_BASE_DIVISOR
from lightning_clr.schedule import (
    amplitude,
    cycle_position,
    derive_step_sizes,
    import_scale_fn,
    scale_fn_path,
    validate_schedule_args,
)

__all__ = ["CyclicLearningRate"]

Bound = Union[float, list[float], None]
DEFAULT_HALF_CYCLE_EPOCHS = 2.0


def _as_list(name: str, value: Bound) -> Optional[list[float]]:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"`{name}` must not be an empty list")
    return values


class CyclicLearningRate(Callback):
    r"""Cyclical learning rate (Smith, 2015), set once per optimizer step through the Trainer's hooks.

    The LR after ``t`` optimizer steps is exactly what :class:`torch.optim.lr_scheduler.CyclicLR`
    gives after ``t`` calls of ``step()``; see :func:`lightning_clr.cyclic_lr`. Nothing has to change
    in ``configure_optimizers``: the callback writes to the optimizer's param groups.

    Args:
        base_lr: Lower LR bound, one float or one per param group. ``None``: found by the range test.
        max_lr: Upper LR bound, one float or one per param group. ``None``: found by the range test.
        step_size_up: Optimizer steps in the rising half-cycle. ``None``: ``half_cycle_epochs`` times the
            optimizer steps per epoch (per rank, after ``accumulate_grad_batches``).
        step_size_down: Optimizer steps in the falling half-cycle. ``None``: same as ``step_size_up``.
        half_cycle_epochs: Half-cycle length in epochs when ``step_size_up`` is ``None``. Smith advises 2-10.
        fit_whole_cycles: When ``step_size_up`` is derived and the run's length is known
            (``max_epochs``/``max_steps``), round the cycle so that a whole number of cycles fills the run and
            it ends at a cycle end, where the LR is back at ``base_lr`` (the falling half may then be up to
            one step per cycle longer than the rising half).
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: Per-step amplitude decay for ``"exp_range"``, in (0, 1].
        scale_fn: A custom amplitude function, or its import path ``"pkg.module:function"``. A function is
            saved in checkpoints by import path; a lambda or local function is not saved (a warning says so).
        scale_mode: What ``scale_fn`` receives: ``"cycle"`` or ``"iterations"``.
        cycle_momentum: Cycle momentum (or Adam's beta1) inversely to the LR, only on param groups that
            already use momentum (> 0) or betas. Never switches momentum on. Off by default: with
            ``base_lr = max_lr / 4``, momentum 0.95 at the base and 0.85 at the peak nearly cancel the cycle of
            the effective step ``lr / (1 - momentum)`` (5x against 6.7x ``max_lr``), and on Fashion-MNIST
            turning it off raised the final accuracy (docs/benchmarks.md).
        base_momentum: Momentum at the LR peak.
        max_momentum: Momentum at the LR base.
        range_test: Settings of the range test that runs when a bound is ``None``.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_clr import CyclicLearningRate
        >>> clr = CyclicLearningRate(base_lr=1e-3, max_lr=6e-3, step_size_up=2000, mode="triangular")
        >>> trainer = pl.Trainer(callbacks=[clr], logger=False, enable_checkpointing=False)

    Several optimizers are supported: each one follows the schedule with its own step count, and a list
    of bounds gives one value per param group across all optimizers, in order. The range test needs a
    single optimizer; give both bounds explicitly otherwise.

    A scheduler returned by ``configure_optimizers`` is removed at fit start, with a warning: the
    callback owns the LR.
    """

    def __init__(
        self,
        base_lr: Union[float, list[float], None] = None,
        max_lr: Union[float, list[float], None] = None,
        step_size_up: Optional[int] = None,
        step_size_down: Optional[int] = None,
        half_cycle_epochs: float = DEFAULT_HALF_CYCLE_EPOCHS,
        fit_whole_cycles: bool = True,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        scale_fn: Union[Callable[[float], float], str, None] = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        cycle_momentum: bool = False,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        range_test: Optional[RangeTestConfig] = None,
    ) -> None:
        base_list = _as_list("base_lr", base_lr)
        max_list = _as_list("max_lr", max_lr)
        for name, values in (("base_lr", base_list), ("max_lr", max_list)):
            for v in values or []:
                validate_schedule_args(**{name: v})
        if base_list is not None and max_list is not None:
            if len(base_list) != len(max_list) and 1 not in (len(base_list), len(max_list)):
                raise ValueError(
                    f"`base_lr` and `max_lr` must have the same number of values, got {base_lr!r} and {max_lr!r}"
                )
            n = max(len(base_list), len(max_list))
            for b, m in zip(base_list * (n // len(base_list)), max_list * (n // len(max_list))):
                if m < b:
                    raise ValueError(f"`max_lr` ({max_lr!r}) must be >= `base_lr` ({base_lr!r})")
        if isinstance(scale_fn, str):
            scale_fn = import_scale_fn(scale_fn)
        if scale_fn is not None and not callable(scale_fn):
            raise ValueError(f"`scale_fn` must be a callable or an import path, got {scale_fn!r}")
        for name, value in (("step_size_up", step_size_up), ("step_size_down", step_size_down)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"`{name}` must be an int >= 1 (optimizer steps), got {value!r}")
        validate_schedule_args(
            step_size_up=step_size_up,
            step_size_down=step_size_down,
            mode=mode,
            gamma=gamma,
            scale_mode=scale_mode,
            base_momentum=base_momentum,
            max_momentum=max_momentum,
            scale_fn=scale_fn,
            half_cycle_epochs=half_cycle_epochs,
        )
        if range_test is not None and not isinstance(range_test, RangeTestConfig):
            raise ValueError(f"`range_test` must be a RangeTestConfig, got {range_test!r}")

        self._user_base_lr = base_list
        self._user_max_lr = max_list
        self._user_step_size_down = step_size_down
        self.half_cycle_epochs = float(half_cycle_epochs)
        self.fit_whole_cycles = fit_whole_cycles
        self.mode = mode
        self.gamma = float(gamma)
        self.scale_fn: Optional[Callable[[float], float]] = scale_fn
        self.scale_mode = scale_mode
        self.cycle_momentum = cycle_momentum
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)
        self.range_test = range_test if range_test is not None else RangeTestConfig()

        # Resolved at fit start (or restored from a checkpoint).
        self.base_lr: Union[float, list[float], None] = base_lr
        self.max_lr: Union[float, list[float], None] = max_lr
        self.step_size_up: Optional[int] = step_size_up
        self.step_size_down: Optional[int] = step_size_down
        self.range_test_result: Any = None  # RangeTestResult when the test ran
        self.steps_per_epoch: Optional[int] = None

        self._base: list[float] = []  # one per param group, across all optimizers
        self._max: list[float] = []
        self._steps: list[int] = []  # optimizer steps taken, one count per optimizer
        self._restored = False
        self._restored_range_test: Optional[dict[str, Any]] = None
        # Per optimizer: its param groups' flat indices, which momentum key each group cycles.
        self._optimizers: list[Optimizer] = []
        self._opt_index: dict[int, int] = {}
        self._group_slices: list[range] = []
        self._momentum_keys: list[Optional[str]] = []
        self._applied: list[int] = []
        self._pending: list[bool] = []
        self._scale_before: Optional[float] = None
        self._scaler: Any = None
        self._any_pending = False
        self._warned_scale_fn = False

    # ------------------------------------------------------------------ properties
    @property
    def resolved_half_cycle_epochs(self) -> Optional[float]:
        """The half-cycle in epochs after fit start (``step_size_up / steps_per_epoch``)."""
        if self.step_size_up is None or not self.steps_per_epoch:
            return None
        return self.step_size_up / self.steps_per_epoch

    @property
    def steps(self) -> list[int]:
        """Optimizer steps taken under the schedule, one count per optimizer."""
        self._settle()
        return list(self._steps)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # A new fit starts at step 0; load_state_dict (called after setup on resume) overrides this.
            self._restored = False
            self._steps = []
            self._refuse_sharded_range_test(trainer)

    def _refuse_sharded_range_test(self, trainer: pl.Trainer) -> None:
        """Before the model is sharded: the range test snapshots the full parameters on every rank."""
        if trainer.fast_dev_run or self._base or (self._user_base_lr is not None and self._user_max_lr is not None):
            return
        try:
            refuse_sharded(trainer.strategy)
        except ValueError as err:
            raise ValueError(
                f"CyclicLearningRate(base_lr={self._user_base_lr!r}, max_lr={self._user_max_lr!r}) leaves a bound"
                f" to the range test. {err}"
            ) from None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = [opt for opt in trainer.optimizers if type(opt).__name__ != "_MockOptimizer"]
        if not optimizers:
            raise ValueError(
                "CyclicLearningRate needs an optimizer, but `configure_optimizers` returned none."
                " Return a torch optimizer from `configure_optimizers`."
            )
        self._optimizers = optimizers
        self._opt_index = {id(opt): i for i, opt in enumerate(optimizers)}
        self._group_slices, start = [], 0
        for i, opt in enumerate(optimizers):
            for j, group in enumerate(opt.param_groups):
                if "lr" not in group:
                    raise ValueError(
                        f"CyclicLearningRate: param group {j} of optimizer {i} ({type(opt).__name__}) has no 'lr'"
                    )
            self._group_slices.append(range(start, start + len(opt.param_groups)))
            start += len(opt.param_groups)
        for name, values in (("base_lr", self._user_base_lr), ("max_lr", self._user_max_lr)):
            if values is not None and len(values) not in (1, start):
                raise ValueError(
                    f"`{name}` has {len(values)} values, but the optimizer(s) have {start} param groups:"
                    f" give one value, or one per param group ({name}={values!r})"
                )
        self._remove_configured_schedulers(trainer)
        self._momentum_keys = [self._momentum_key(g) for opt in optimizers for g in opt.param_groups]
        if not self._steps:
            self._steps = [0] * len(optimizers)
        if len(self._steps) != len(optimizers):
            raise ValueError(
                f"The checkpoint's CyclicLearningRate state has {len(self._steps)} optimizer step counts,"
                f" but the model has {len(optimizers)} optimizers"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resolve_bounds(trainer, pl_module)
        self._resolve_cycle_length(trainer)
        self._applied = [-1] * len(self._optimizers)
        self._pending = [False] * len(self._optimizers)
        self._any_pending = False
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # fp16 AMP's GradScaler, fixed for the fit
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        for i in range(len(self._optimizers)):
            self._apply(i)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        i = self._opt_index.get(id(optimizer))
        if i is None or not self._applied:
            return
        if self._any_pending:  # manual optimization: an earlier step of this batch
            self._settle()
        if self._applied[i] != self._steps[i]:
            self._apply(i)
        self._pending[i] = self._any_pending = True
        if self._scaler is not None:
            self._scale_before = float(self._scaler.get_scale())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._any_pending:
            self._settle()

    def state_dict(self) -> dict[str, Any]:
        self._settle()
        path = scale_fn_path(self.scale_fn) if self.scale_fn is not None else None
        if self.scale_fn is not None and path is None and not self._warned_scale_fn:
            self._warned_scale_fn = True
            rank_zero_warn(
                f"CyclicLearningRate: the custom `scale_fn` {self.scale_fn!r} is not saved in the checkpoint (a lambda"
                " or local function cannot be imported back). Pass it again when resuming, or use a module-level"
                " function or its import path 'pkg.module:function', which is saved."
            )
        result = self.range_test_result
        return {
            "version": 1,
            "base_lr": list(self._base),
            "max_lr": list(self._max),
            "step_size_up": self.step_size_up,
            "step_size_down": self.step_size_down,
            "steps_per_epoch": self.steps_per_epoch,
            "steps": list(self._steps),
            "mode": self.mode,
            "gamma": self.gamma,
            "scale_fn": path,
            "range_test": result.to_dict() if result is not None else self._restored_range_test,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict.get("base_lr"):
            return  # saved before the bounds were resolved
        self._base = [float(v) for v in state_dict["base_lr"]]
        self._max = [float(v) for v in state_dict["max_lr"]]
        self.step_size_up = int(state_dict["step_size_up"])
        self.step_size_down = int(state_dict["step_size_down"])
        self.steps_per_epoch = state_dict.get("steps_per_epoch")
        self._steps = [int(v) for v in state_dict["steps"]]
        self._restored_range_test = state_dict.get("range_test")
        self._restored = True
        path = state_dict.get("scale_fn")
        if path and self.scale_fn is None:
            self.scale_fn = import_scale_fn(path)

    # ------------------------------------------------------------------ internals
    def _momentum_key(self, group: dict[str, Any]) -> Optional[str]:
        if not self.cycle_momentum:
            return None
        if "betas" in group:
            return "betas"
        momentum = group.get("momentum")
        if isinstance(momentum, (int, float)) and momentum > 0:
            return "momentum"
        return None

    def _remove_configured_schedulers(self, trainer: pl.Trainer) -> None:
        configs = trainer.strategy.lr_scheduler_configs
        ours = {id(opt) for opt in self._optimizers}
        keep = [c for c in configs if id(c.scheduler.optimizer) not in ours]
        for config in configs:
            if id(config.scheduler.optimizer) not in ours:
                continue
            scheduler = config.scheduler
            rank_zero_warn(
                f"CyclicLearningRate replaces the {type(scheduler).__name__} scheduler (interval={config.interval!r})"
                f" that `configure_optimizers` returned for {type(scheduler.optimizer).__name__}: the callback now"
                " sets the LR once per optimizer step. Remove the scheduler to silence this warning."
            )
            self._undo_cyclic_lr_momentum(scheduler)
        trainer.strategy.lr_scheduler_configs = keep

    @staticmethod
    def _undo_cyclic_lr_momentum(scheduler: Any) -> None:
        # torch's CyclicLR switches momentum ON for SGD(momentum=0) at construction. Put it back.
        if not getattr(scheduler, "cycle_momentum", False):
            return
        optimizer = scheduler.optimizer
        for group in optimizer.param_groups:
            group.pop("max_momentum", None)
            group.pop("base_momentum", None)
            if "momentum" in group and optimizer.defaults.get("momentum", None) == 0:
                group["momentum"] = 0

    def _resolve_bounds(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n_groups = sum(len(s) for s in self._group_slices)
        if self._restored:
            if len(self._base) != n_groups:
                raise ValueError(
                    f"The checkpoint's CyclicLearningRate bounds cover {len(self._base)} param groups,"
                    f" but the optimizer(s) have {n_groups}"
                )
            rank_zero_info(
                f"CyclicLearningRate: resumed at step {self._steps} with bounds restored from the checkpoint"
                f" (base_lr={_fmt(self._base)}, max_lr={_fmt(self._max)}); the range test does not run again."
            )
        else:
            base, high = self._user_base_lr, self._user_max_lr
            if self._base and len(self._base) == n_groups:  # resolved by an earlier fit of this callback
                base, high = self._base, self._max
            elif base is None or high is None:
                base, high = self._bounds_from_range_test(trainer, pl_module, base, high)
            self._base = base * n_groups if len(base) == 1 else list(base)
            self._max = high * n_groups if len(high) == 1 else list(high)
            # Every rank must use the same bounds: rank 0's win.
            self._base, self._max = trainer.strategy.broadcast((self._base, self._max), src=0)
        for b, m in zip(self._base, self._max):
            if m < b:
                raise ValueError(f"`max_lr` ({_fmt(self._max)}) must be >= `base_lr` ({_fmt(self._base)})")
        self.base_lr = self._base[0] if len(set(self._base)) == 1 else list(self._base)
        self.max_lr = self._max[0] if len(set(self._max)) == 1 else list(self._max)

    def _bounds_from_range_test(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        base: Optional[list[float]],
        high: Optional[list[float]],
    ) -> tuple[list[float], list[float]]:
        if trainer.fast_dev_run:
            current = float(self._optimizers[0].param_groups[0]["lr"])
            high = high or [current]
            base = base or [h / DEFAULT_BASE_DIVISOR for h in high]
            rank_zero_info(
                f"CyclicLearningRate: `fast_dev_run` skips the range test; using fallback bounds"
                f" base_lr={_fmt(base)}, max_lr={_fmt(high)} (max_lr = the optimizer's LR, base_lr = max_lr / 4)."
            )
            return base, high
        if len(self._optimizers) > 1:
            raise ValueError(
                f"The range test needs a single optimizer, found {len(self._optimizers)}: give `base_lr` and"
                " `max_lr` explicitly to CyclicLearningRate."
            )
        from lightning_clr.range_test import run_range_test

        result = run_range_test(trainer, pl_module, self.range_test)
        self.range_test_result = result
        found_base, found_max = float(result.base_lr), float(result.max_lr)
        if high is None and base is not None and found_max < max(base):
            rank_zero_warn(
                f"CyclicLearningRate: the range test's max_lr {found_max:.3g} is below the given base_lr"
                f" {_fmt(base)}; using max_lr = 4 x base_lr."
            )
            high = [b * DEFAULT_BASE_DIVISOR for b in base]
        if base is None and high is not None and found_base > min(high):
            rank_zero_warn(
                f"CyclicLearningRate: the range test's base_lr {found_base:.3g} is above the given max_lr"
                f" {_fmt(high)}; using base_lr = max_lr / 4."
            )
            base = [h / DEFAULT_BASE_DIVISOR for h in high]
        base = base or [found_base]
        high = high or [found_max]
        rank_zero_info(
            f"CyclicLearningRate: range test chose base_lr={_fmt(base)}, max_lr={_fmt(high)} ({result.rule!r} rule)."
        )
        return base, high

    def _resolve_cycle_length(self, trainer: pl.Trainer) -> None:
        batches = trainer.num_training_batches
        if batches != float("inf") and batches > 0:
            self.steps_per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        if self.step_size_up is not None:  # given, restored from a checkpoint, or resolved by an earlier fit
            if self.step_size_down is None:
                self.step_size_down = self.step_size_up
            return
        if self.steps_per_epoch is None:
            raise ValueError(
                "CyclicLearningRate cannot derive `step_size_up` because the train dataloader has no length"
                " (an IterableDataset?): pass `step_size_up` in optimizer steps."
            )
        total = trainer.estimated_stepping_batches if self.fit_whole_cycles else None
        self.step_size_up, self.step_size_down = derive_step_sizes(
            self.half_cycle_epochs, self.steps_per_epoch, total_steps=total, step_size_down=self._user_step_size_down
        )
        rank_zero_info(
            f"CyclicLearningRate: step_size_up={self.step_size_up} optimizer steps"
            f" ({self.step_size_up / self.steps_per_epoch:.3g} epochs of {self.steps_per_epoch} steps per rank)."
        )

    def _apply(self, i: int) -> None:
        """Set LR (and momentum) of optimizer ``i``'s param groups for its current step count."""
        step = self._steps[i]
        cycle, scale_factor = cycle_position(step, self.step_size_up, self.step_size_down)  # type: ignore[arg-type]
        amp = amplitude(
            step, cycle, mode=self.mode, gamma=self.gamma, scale_fn=self.scale_fn, scale_mode=self.scale_mode
        )
        groups = self._optimizers[i].param_groups
        for k, group in zip(self._group_slices[i], groups):
            low, high = self._base[k], self._max[k]
            group["lr"] = low + (high - low) * scale_factor * amp
            key = self._momentum_keys[k]
            if key is not None:
                momentum = self.max_momentum - (self.max_momentum - self.base_momentum) * scale_factor * amp
                if key == "betas":
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum
        self._applied[i] = step

    def _settle(self) -> None:
        """Count the optimizer steps that completed since ``on_before_optimizer_step`` and move the LR on.

        A step that AMP's GradScaler skipped (inf/NaN gradients) lowers the scale and is not counted.
        """
        if not self._any_pending:
            return
        self._any_pending = False
        skipped = False
        if self._scale_before is not None:
            skipped = float(self._scaler.get_scale()) < self._scale_before
            self._scale_before = None
        for i, pending in enumerate(self._pending):
            if pending:
                self._pending[i] = False
                if not skipped:
                    self._steps[i] += 1
                    self._apply(i)


def _fmt(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        if len(set(values)) == 1:
            return f"{values[0]:.4g}"
        return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
    return f"{values:.4g}"
