"""The ``CyclicLearningRate`` callback: small Lightning hooks around three separate things.

- ``settings`` (:class:`~lightning_clr.CycleSettings`): what the user asked for, validated in ``__init__``;
- ``plan`` (:class:`~lightning_clr.CyclePlan`): what a fit resolved from them at train start (a fit without
  ``ckpt_path`` always resolves a new one) or what a checkpoint restored; immutable, it is the checkpoint state;
- the per-step writer (:class:`~lightning_clr.engine._writer.ScheduleWriter`), which sets ``lr = f(step)`` once per
  optimizer step through the pure functions of :mod:`lightning_clr.schedule`.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_clr._compat import callback_bases
from lightning_clr._validation import ArgumentError
from lightning_clr.engine._divergence import DivergenceGuard
from lightning_clr.engine._ending import measured_cycles, warn_epoch_early_stopping
from lightning_clr.engine._guard import Guard, check_state
from lightning_clr.engine._optimizers import remove_schedulers, training_optimizers
from lightning_clr.engine._plan import CyclePlan, one_or_list
from lightning_clr.engine._resolve import (
    build_plan,
    describe,
    expand_bounds,
    resolve_bounds,
    resolve_cycle,
)
from lightning_clr.engine._resume import check_restored_shape, refuse_sharded_fit, resume_plan
from lightning_clr.engine._settings import DEFAULT_HALF_CYCLE_EPOCHS, CycleSettings
from lightning_clr.engine._writer import ScheduleWriter, check_scale_fn
from lightning_clr.range_test import RangeTestConfig, RangeTestResult

__all__ = ["CyclicLearningRate"]


class CyclicLearningRate(*callback_bases()):  # a Callback of lightning.pytorch and of pytorch_lightning
    r"""Cyclical learning rate (Smith, 2015), set once per optimizer step by a step hook on the optimizer.

    The LR after ``t`` optimizer steps is exactly what :class:`torch.optim.lr_scheduler.CyclicLR`
    gives after ``t`` calls of ``step()``; see :func:`lightning_clr.cyclic_lr`. Nothing has to change
    in ``configure_optimizers``: the callback writes to the optimizer's param groups.

    Args:
        base_lr: Lower LR bound, one float or one per param group. ``None``: found by the range test.
        max_lr: Upper LR bound, one float or one per param group. ``None``: found by the range test.
        step_size_up: Optimizer steps in the rising half-cycle. ``None``: ``half_cycle_epochs`` times the
            optimizer steps per epoch (per rank, after ``accumulate_grad_batches``); for a train dataloader
            without a length, ``Trainer(max_steps)`` is split into 3 whole cycles.
        step_size_down: Optimizer steps in the falling half-cycle. ``None``: same as ``step_size_up``.
        half_cycle_epochs: Half-cycle length in epochs when ``step_size_up`` is ``None``. Smith advises 2-10.
        fit_whole_cycles: When ``step_size_up`` is derived and the run's length is known
            (``max_epochs``/``max_steps``), round the cycle so that a whole number of cycles fills the run and
            it ends at a cycle end, where the LR is back at ``base_lr`` (the falling half may then be up to
            one step per cycle longer than the rising half).
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: Per-step amplitude decay for ``"exp_range"``, in (0, 1]; must stay 1.0 for the other modes.
        scale_fn: A custom amplitude function, or its import path ``"pkg.module:function"``. It is checked at fit
            start on the values it will receive (finite, >= 0). A checkpoint stores its path but never imports
            it: pass the function again when resuming.
        scale_mode: What ``scale_fn`` receives: ``"cycle"`` or ``"iterations"``.
        cycle_momentum: Cycle momentum (or Adam's beta1) inversely to the LR, only on param groups that
            already use momentum (> 0) or betas. Never switches momentum on. Off by default
            (docs/benchmarks.md measures why).
        base_momentum: Momentum at the LR peak.
        max_momentum: Momentum at the LR base.
        final_lr_ratio: In (0, 1]. Below 1, an annealing tail: over the run's last ``step_size_down`` optimizer
            steps the LR falls to ``base_lr * final_lr_ratio``, so the run ends below ``base_lr`` (Smith's 1cycle
            "annihilation" in the last falling half; when the cycles do not fill the run, the tail falls from
            wherever the cycle is, see docs/schedule.md). 1.0: no tail, exactly torch's ``CyclicLR``. ``None``
            (automatic): 0.1 when a bound is left to the callback (docs/benchmarks.md section 4 measures why),
            1.0 when both bounds are given, so that torch's ``CyclicLR`` arguments give torch's schedule. Needs a
            known run length (``max_epochs`` or ``max_steps``); without one, the automatic tail is left out (an
            info line says so) and a value below 1 is an error.
        range_test: Settings of the range test that runs when a bound is ``None``.
        guard: Settings of the divergence guard (docs/guard.md). By default it watches a fit whose bounds came
            from the range test: a non-finite or runaway training loss rolls the model and optimizer back to the
            last good cycle trough and lowers both bounds by ``backoff_factor``, at most ``max_backoffs`` times.
            ``DivergenceGuard(enabled=False)`` switches it off, ``enabled=True`` on for explicit bounds too.

    Param groups keep their ratios: the range test sweeps one multiplier over the groups' configured LRs, so
    a backbone at 1e-4 and a head at 1e-3 get bounds 10x apart; one bound given per group keeps its ratios too.

    Resume (``trainer.fit(ckpt_path=...)``): the plan comes from the checkpoint and the range test does not run.
    A setting left at its default takes the checkpoint's value; one given explicitly that differs takes effect
    from the resumed step on, with a warning naming the argument and both values. A checkpoint without the
    callback's state (the callback joins a trained run): the cycle is planned over the remaining steps from the
    resumed step, and trained weights are not swept unless ``RangeTestConfig(on_resume=True)``.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_clr import CyclicLearningRate
        >>> clr = CyclicLearningRate(base_lr=1e-3, max_lr=6e-3, step_size_up=2000, mode="triangular")
        >>> trainer = pl.Trainer(callbacks=[clr], logger=False, enable_checkpointing=False)

    Several optimizers are supported: each one follows the schedule with its own step count, and a list
    of bounds gives one value per param group across all optimizers, in order. The range test needs a
    single optimizer; give both bounds explicitly otherwise. In manual optimization, an optimizer that steps
    less often than once per batch (a GAN's generator) gets a derived cycle in its own steps, measured in the
    first whole epoch (docs/schedule.md).

    A scheduler returned by ``configure_optimizers`` is removed at fit start, with a warning, and what it
    changed in the param groups (OneCycleLR's momentum, ``initial_lr``, ...) is undone: the callback owns the LR.
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
        final_lr_ratio: Optional[float] = None,
        range_test: Optional[RangeTestConfig] = None,
        guard: Optional[DivergenceGuard] = None,
    ) -> None:
        self._settings = CycleSettings(
            base_lr=base_lr,
            max_lr=max_lr,
            step_size_up=step_size_up,
            step_size_down=step_size_down,
            half_cycle_epochs=half_cycle_epochs,
            fit_whole_cycles=fit_whole_cycles,
            mode=mode,
            gamma=gamma,
            scale_fn=scale_fn,
            scale_mode=scale_mode,
            cycle_momentum=cycle_momentum,
            base_momentum=base_momentum,
            max_momentum=max_momentum,
            final_lr_ratio=final_lr_ratio,
            range_test=range_test if range_test is not None else RangeTestConfig(),
            guard=guard if guard is not None else DivergenceGuard(),
        )
        self._plan: Optional[CyclePlan] = None
        self._restored: Optional[tuple[CyclePlan, list[int]]] = None  # from load_state_dict, until train start
        self._result: Optional[RangeTestResult] = None  # the range test of this fit
        self._steps: list[int] = []
        self._optimizers: list[Optimizer] = []
        self._writer: Optional[ScheduleWriter] = None
        self._guard: Optional[Guard] = None
        self._guard_state: Optional[dict[str, Any]] = None  # from load_state_dict, until train start
        self._warned_scale_fn = False
        self._announce = False
        self._measure: Optional[tuple[list[int], int]] = None  # steps at the epoch's start, its batches so far
        self._measured = False

    def apply(self, settings: CycleSettings) -> None:
        """Replace the settings before a fit resolves its cycle: between fits, or from another callback's
        ``setup`` hook (how the tuner gives every rank its trial's settings). Not while a fit trains.

        Example:
            >>> clr = CyclicLearningRate()
            >>> clr.apply(clr.settings.replace(base_lr=1e-3, max_lr=1e-2, half_cycle_epochs=4))
            >>> clr.half_cycle_epochs, clr.max_lr
            (4.0, 0.01)
        """
        if not isinstance(settings, CycleSettings):
            raise ArgumentError("settings", settings, "a CycleSettings, e.g. clr.settings.replace(...)")
        if self._writer is not None and getattr(self._writer, "_handles", None):
            raise RuntimeError("CyclicLearningRate.apply: a fit is training with this callback; apply settings"
                               " before the fit starts (in `setup`) or between fits")
        self._settings = settings
        self._plan, self._restored, self._result, self._writer, self._steps = None, None, None, None, []

    # ------------------------------------------------------------------ read-only views
    @property
    def settings(self) -> CycleSettings:
        """The validated arguments (frozen)."""
        return self._settings

    @property
    def plan(self) -> Optional[CyclePlan]:
        """The resolved plan of the current or last fit; ``None`` before train start."""
        return self._plan

    @property
    def steps(self) -> list[int]:
        """Optimizer steps taken under the schedule, one count per optimizer."""
        if self._writer is not None:
            return list(self._writer.steps)
        return list(self._steps)

    @property
    def counted_steps(self) -> list[int]:
        """Like :attr:`steps`, without waiting for a fused optimizer's skip flag still on the device (a skipped
        step may be in it until the next step takes it back): for readers at every step."""
        return self._writer.counted if self._writer is not None else list(self._steps)

    @property
    def base_lr(self) -> Union[float, list[float], None]:
        """The resolved lower bound (one float when all param groups share it; lowered by the guard's back-offs,
        if any), else the given one."""
        return one_or_list(self._plan.effective_base_lr if self._plan else self._settings.base_lr)

    @property
    def max_lr(self) -> Union[float, list[float], None]:
        return one_or_list(self._plan.effective_max_lr if self._plan else self._settings.max_lr)

    @property
    def step_size_up(self) -> Optional[int]:
        return self._plan.step_size_up if self._plan else self._settings.step_size_up

    @property
    def step_size_down(self) -> Optional[int]:
        return self._plan.step_size_down if self._plan else self._settings.step_size_down

    @property
    def steps_per_epoch(self) -> Optional[int]:
        return self._plan.steps_per_epoch if self._plan else None

    @property
    def half_cycle_epochs(self) -> Optional[float]:
        """The half-cycle in epochs, read as ``base_lr``, ``step_size_up`` and ``mode`` are. From train start on
        it is the resolved plan's (``step_size_up / steps_per_epoch``, ``None`` for a fit without epochs), before
        it the given one. The given one is always ``settings.half_cycle_epochs``."""
        return self.resolved_half_cycle_epochs if self._plan else self._settings.half_cycle_epochs

    @property
    def mode(self) -> str:
        return self._plan.mode if self._plan else self._settings.mode

    @property
    def range_test(self) -> RangeTestConfig:
        return self._settings.range_test

    @property
    def range_test_result(self) -> Optional[RangeTestResult]:
        """This fit's range-test result, or the one stored in the resumed checkpoint (``None`` when none ran)."""
        if self._result is None and self._plan is not None and self._plan.range_test is not None:
            self._result = RangeTestResult.from_dict(self._plan.range_test)
        return self._result

    @property
    def resolved_half_cycle_epochs(self) -> Optional[float]:
        """The resolved plan's half-cycle in epochs (``step_size_up / steps_per_epoch``); ``None`` before train
        start. :attr:`half_cycle_epochs` gives the same value from train start on."""
        plan = self._plan
        return plan.step_size_up / plan.steps_per_epoch if plan and plan.steps_per_epoch else None

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # A new fit resolves a new plan; load_state_dict (called after setup on resume) brings the old one.
        self._plan, self._restored, self._result, self._writer, self._steps = None, None, None, None, []
        warn_epoch_early_stopping(trainer)
        self._guard, self._guard_state = None, None
        self._measure, self._measured = None, False
        if self._settings.needs_range_test and not trainer.fast_dev_run:
            refuse_sharded_fit(self._settings, trainer.strategy)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._optimizers = training_optimizers(trainer)
        counts = tuple(len(opt.param_groups) for opt in self._optimizers)
        if self._restored is not None:
            check_restored_shape(self._restored, counts)
        else:  # list lengths only the optimizer can check: before anything trains
            for name in ("base_lr", "max_lr"):
                values = getattr(self._settings, name)
                if values is not None:
                    expand_bounds(name, values, sum(counts))
        remove_schedulers(trainer, self._optimizers)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is not None:
            plan, steps = self._resume(trainer, *self._restored)
        else:  # at train start the loops are restored: a resumed run's global step is known
            plan, steps = self._resolve(trainer, pl_module, trainer.global_step), [0] * len(self._optimizers)
        # Every rank follows rank 0's plan (its range test, its settings).
        local, plan = plan, trainer.strategy.broadcast(plan, src=0)
        if plan != local:
            warnings.warn(
                f"CyclicLearningRate on global rank {trainer.global_rank}: this rank's settings resolve to another"
                " plan than rank 0's; every rank follows rank 0's. " + describe(plan), stacklevel=1
            )
        self._plan, self._steps = plan, steps
        self._writer = ScheduleWriter(plan, self._optimizers, steps, self._settings.scale_fn)
        self._writer.start()  # from here on, the optimizers' own step hooks count the steps that really happen
        if self._settings.guard.active(range_test_ran=plan.range_test is not None):
            self._guard = Guard(self._settings.guard, plan, self._guard_state)
            self._guard.start(trainer, self._optimizers, steps[0])
        self._guard_state = None
        self._announce = True

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._announce and self._plan is not None:  # only a fit that trains tells about its cycle
            self._announce = False
            rank_zero_info(describe(self._plan))
            if self._guard is not None:
                rank_zero_info(f"CyclicLearningRate: divergence guard on ({self._settings.guard}).")
        plan = self._plan
        measures = not (self._measured or pl_module.automatic_optimization or plan is None
                        or plan.optimizer_cycles is not None or plan.half_cycle_epochs is None)
        self._measure = (self.steps, 0) if measures else None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._measure is not None:
            self._measure = (self._measure[0], self._measure[1] + 1)
        if self._guard is not None and self._writer is not None:  # the one check on a fit without the guard
            plan = self._guard.after_batch(trainer, outputs, self._writer.counted[0])
            if plan is not None:  # rolled back: the lowered bounds from this step on
                self._follow(plan)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Manual optimization: each optimizer's steps in the first whole epoch give its own derived cycle."""
        if self._measure is None or self._plan is None or self._writer is None:
            return
        (before, batches), self._measure = self._measure, None
        if batches != trainer.num_training_batches:
            return  # a partial epoch (resumed mid-epoch, stopped early): measure the next one
        measured = [now - then for now, then in zip(self.steps, before)]
        plan = measured_cycles(self._plan, self._settings, measured)
        self._measured = True  # once per fit: the first whole epoch
        if plan is None:
            return
        self._follow(trainer.strategy.broadcast(plan, src=0))
        rank_zero_info(
            f"CyclicLearningRate: the optimizers stepped {measured} times in the first whole epoch, so each one"
            f" follows a cycle in its own steps from step {self.steps} on. {describe(self._plan)}"
        )

    def _follow(self, plan: CyclePlan) -> None:
        """From the current step counts on, write ``plan`` (a guard's back-off, or measured per-optimizer cycles)."""
        assert self._writer is not None
        steps = self._writer.steps
        self._writer.stop()
        self._plan, self._writer = plan, ScheduleWriter(plan, self._optimizers, steps, self._settings.scale_fn)
        self._writer.start()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._writer is not None:  # no hook of ours stays on the user's optimizer after the fit
            self._writer.stop()
        if self._guard is not None:
            self._guard.release()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._writer is not None:  # a failed fit calls this hook, not teardown
            self._writer.stop()
        if self._guard is not None:
            self._guard.release()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._plan is None:
            return {}  # nothing resolved yet: Lightning saves no state for this callback
        if self._plan.custom_scale_fn and self._plan.scale_fn_path is None and not self._warned_scale_fn:
            self._warned_scale_fn = True
            rank_zero_warn(
                f"CyclicLearningRate: the custom `scale_fn` {self._settings.scale_fn!r} is not saved in the checkpoint"
                " (a lambda or local function has no import path). Pass it again when resuming."
            )
        state = self._plan.to_state(self.steps)
        if self._guard is not None:
            state["guard"] = self._guard.state()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._restored = CyclePlan.from_state(state_dict)  # validated: a bad state raises, naming the key
            self._guard_state = check_state(state_dict.get("guard"))  # the guard's levels: plain numbers

    # ------------------------------------------------------------------ internals
    def _resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule, start: int) -> CyclePlan:
        """A new plan over the run's steps from global step ``start`` (> 0: a resumed run without our state)."""
        cycle = resolve_cycle(self._settings, trainer, start)  # before the range test: a bad run length fails first
        if self._settings.scale_fn is not None:
            check_scale_fn(self._settings.scale_fn, self._settings.scale_mode, cycle.step_size_up
                           + cycle.step_size_down, cycle.total_steps)
        bounds = resolve_bounds(self._settings, trainer, pl_module, self._optimizers, start)
        self._result = bounds[2]
        return build_plan(self._settings, cycle, bounds, self._optimizers, start)

    def _resume(self, trainer: pl.Trainer, plan: CyclePlan, steps: list[int]) -> tuple[CyclePlan, list[int]]:
        self._restored = None
        return resume_plan(plan, steps, self._settings, trainer), list(steps)
