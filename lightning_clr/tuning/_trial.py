"""One trial of :func:`lightning_clr.tune_cycle_length` on every rank, built on :class:`CyclePruningCallback`,
and the one range test per study that finds the LR bounds shared by every trial.

Why not optuna-integration's ``PyTorchLightningPruningCallback``: under ``strategy="ddp"``, torchrun or
SLURM every rank asks for its own trial and trains with its own cycle length (optuna-integration #59).
Here global rank 0 alone talks to Optuna; the trial's values travel to every rank with
``trainer.strategy.broadcast`` in ``setup``, before any training step, and the prune decision the same way.

Only imported once optuna is known to be installed.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import optuna
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from optuna.trial import TrialState

from lightning_clr._compat import callback_bases
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.tuning._bounds import combine, release, shared_bounds, store_bounds
from lightning_clr.tuning._config import TuneRun
from lightning_clr.tuning._env import distributed
from lightning_clr.tuning._optuna import storage_of, trial_id_of
from lightning_clr.tuning._pruning_callback import CyclePruningCallback, find_clr
from lightning_clr.tuning._storage import (
    Heartbeat,
    StorageError,
    finished_elsewhere,
    make_storage,
    storage_errors,
    stored_bounds,
    void_stale_error,
)
from lightning_clr.tuning._trial_plan import TrialPlan


class TrialCallback(CyclePruningCallback):
    """A :class:`CyclePruningCallback` that also carries the tuner's whole trial, a :class:`TrialPlan`.

    Rank 0 builds it with the plan and the trial; other ranks with ``None``. In ``setup`` (placed before the
    ``CyclicLearningRate`` in the callbacks, so before that one's ``setup``) the plan is broadcast, installed with
    :meth:`CyclicLearningRate.apply` and ``max_epochs`` set to the study's budget. Rank 0 also keeps every epoch's
    value (``history``) in the trial's user attributes; a NaN fails the trial.

    Example:
        >>> cb = TrialCallback(plan, trial=trial, monitor="val_loss")  # doctest: +SKIP
    """

    def __init__(self, plan: Optional[TrialPlan], trial: Any = None, monitor: str = "val_loss") -> None:
        super().__init__(trial, monitor, whole_cycles=False)
        self.plan = plan
        self.history: dict[int, float] = {}
        self.cycle_ends: list[int] = []

    def _sync(self, trainer: pl.Trainer, clr: CyclicLearningRate) -> None:
        self.plan = plan = trainer.strategy.broadcast(self.plan if trainer.global_rank == 0 else None, src=0)
        self.params = {"half_cycle_epochs": plan.half_cycle_epochs}
        if trainer.global_rank != 0:
            pl.seed_everything(plan.seed, verbose=False)
        clr.apply(plan.settings(clr.range_test))
        trainer.fit_loop.max_epochs = plan.epochs
        self.history, self.cycle_ends = {}, []

    def _holds_claim(self) -> bool:
        return False  # the tuner's range test runs in its own fit (find_bounds), never in a trial

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self.history[trainer.current_epoch + 1] = float(value)
        cycles = self._cycles
        super().on_train_epoch_end(trainer, pl_module)
        if self._cycles != cycles:
            self.cycle_ends.append(trainer.current_epoch + 1)

    def _judge(self, trainer: pl.Trainer, epoch: int) -> Optional[str]:
        trial = self._trial()
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"tune_cycle_length: the monitored metric {self.monitor!r} was not logged by epoch {epoch};"
                f" logged: {sorted(trainer.callback_metrics)}"
            )
        with storage_errors(storage_of(trial.study)):
            self._save_history(trial)
            if not self.cycle_ends:  # the first cycle end: what the budget-fitted cycle trained with
                clr = find_clr(trainer)
                for key in ("steps_per_epoch", "step_size_up", "step_size_down"):
                    trial.set_user_attr(key, getattr(clr, key))
            if math.isnan(float(trainer.callback_metrics[self.monitor])):  # diverged: failed, not pruned
                trial.set_user_attr("error", f"the monitored metric {self.monitor!r} is NaN at epoch {epoch}")
                return "stop"
            decision = super()._judge(trainer, epoch)
            if decision == "stop":
                trial.set_user_attr("pruned_at_epoch", epoch)
        return decision

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0: a fit that another callback (EarlyStopping) ended mid-cycle leaves its history and epoch."""
        last = max(self.history, default=0)
        if trainer.global_rank != 0 or self.plan is None or last in self.cycle_ends:
            return
        trial, plan = self._trial(), find_clr(trainer).plan
        with storage_errors(storage_of(trial.study)):
            self._save_history(trial)
            trial.set_user_attr("stopped_at_epoch", last)
            if plan is not None and plan.steps_per_epoch:
                trial.set_user_attr("first_cycle_end", math.ceil(plan.cycle_length / plan.steps_per_epoch))

    def _save_history(self, trial: Any) -> None:
        trial.set_user_attr("history", {str(k): v for k, v in self.history.items()})


class BoundsCallback(*callback_bases()):  # a Callback of either Lightning package
    """Find the study's LR bounds once: rank 0 broadcasts bounds already stored in the study (the range test is
    then skipped); otherwise the ``CyclicLearningRate`` runs its range test in ``on_train_start``. Rank 0 stores
    the bounds, one per param group, in the study's ``user_attrs`` when the fit ends, before its first training
    step. Placed before the ``CyclicLearningRate`` in the callbacks (its ``setup`` applies the known bounds).
    """

    def __init__(self, clr: CyclicLearningRate, known: Any, study: Any, storage: Any, study_name: Any) -> None:
        self.clr, self.known, self.study, self.storage, self.study_name = clr, known, study, storage, study_name

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["study"] = None
        return state

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # `should_stop` is ignored until the user's min_epochs/min_steps are met: this fit must not train.
        trainer.fit_loop.min_epochs, trainer.fit_loop.epoch_loop.min_steps = 0, None
        self.known = trainer.strategy.broadcast(self.known if trainer.global_rank == 0 else None, src=0)
        if self.known is not None:
            self.clr.apply(self.clr.settings.replace(base_lr=self.known[0], max_lr=self.known[1]))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True  # the CyclicLearningRate's range test runs in its own on_train_start: no step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0 or self.known is not None or self.clr.plan is None:
            return
        study = self.study
        if study is None:
            study = optuna.load_study(study_name=self.study_name, storage=make_storage(self.storage))
        plan = self.clr.plan
        store_bounds(study, plan.base_lr, plan.max_lr, self.clr.range_test_result)


def find_bounds(study: Any, run: TuneRun, make_trainer: Callable[..., pl.Trainer], build: Callable[[], Any]) -> tuple:
    """The LR bounds shared by every trial, per param group: the user's, those stored in the study, or the
    study's one range test (claimed through the storage: one per study, whoever starts first; all ranks)."""
    known, claimed = None, False
    if study is not None:
        with storage_errors(storage_of(study)):
            stored, claimed = shared_bounds(study, "tune_cycle_length")
        if stored is not None:
            known = _combine(run, stored)
    try:
        if known is not None and not distributed(run.trainer_kwargs):
            return _announce(known)  # one process: no other rank needs the bounds broadcast in a fit
        clr = CyclicLearningRate(base_lr=run.base_lr, max_lr=run.max_lr, range_test=run.range_test)
        cb = BoundsCallback(clr, known, study, run.study.storage, run.study.study_name)
        pl.seed_everything(run.study.seed, verbose=False)
        model, dm = build()
        trainer = make_trainer([cb, clr], max_epochs=1, logger=False)
        trainer.fit(model, datamodule=dm)
    finally:
        if claimed:
            with storage_errors(storage_of(study)):
                release(study)  # stored, or failed: either way the next worker need not wait
    if study is None:
        return (None, None)
    stored = stored_bounds(study)
    if stored is None:
        raise RuntimeError("tune_cycle_length: the range test stored no bounds in the study")
    return _announce(_combine(run, stored))


def _combine(run: TuneRun, stored: tuple) -> tuple:
    return combine(stored, run.base_lr, run.max_lr)  # tuples already (the tuner's _validate)


def _announce(bounds: tuple) -> tuple:
    rank_zero_info(
        f"tune_cycle_length: every trial uses base_lr={_fmt(bounds[0])}, max_lr={_fmt(bounds[1])} (stored in the"
        " study)."
    )
    return bounds


def _fmt(values: tuple) -> str:
    return f"{values[0]:.4g}" if len(set(values)) == 1 else "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def ask(study: Any, space: dict[str, Any], bounds: tuple, run: TuneRun) -> tuple[Any, TrialPlan]:
    """Rank 0: a new trial and the plan every rank trains it with."""
    trial = study.ask(space)
    plan = TrialPlan(
        number=trial.number, seed=run.study.seed + trial.number,
        half_cycle_epochs=int(trial.params["half_cycle_epochs"]),
        mode=trial.params.get("mode", run.search.modes[0]),
        max_lr_scale=float(trial.params.get("max_lr_scale", run.search.min_max_lr_scale)),
        base_lr=bounds[0], max_lr=bounds[1], epochs=run.max_epochs,
    )
    high = plan.max_lr_trained
    attrs = dict(mode=plan.mode, base_lr=list(plan.base_lr) if plan.base_lr else None,
                 max_lr=list(high) if high else None, epochs=plan.epochs, seed=plan.seed)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial, plan


def run_trial(
    study: Any, space: dict[str, Any], index: int, bounds: tuple, run: TuneRun,
    make_trainer: Callable[..., pl.Trainer], build: Callable[[], Any],
) -> int:
    """Run one trial on this rank; rank 0 (``study`` given) asks and tells. Returns the epochs trained."""
    trial = plan = None
    seed = run.study.seed + index
    with contextlib.ExitStack() as alive:
        if study is not None:
            trial, plan = _start(study, space, bounds, run, alive)
            seed = plan.seed
        pl.seed_everything(seed, verbose=False)
        model, dm = build()  # right after seeding: trial n's initial weights depend on seed + n only
        clr = CyclicLearningRate(range_test=run.range_test)  # every rank: the plan's settings applied in setup
        cb = TrialCallback(plan, trial, run.monitor)
        version = f"trial_{plan.number}" if plan else f"trial_rank_{index}"
        trainer = make_trainer([cb, clr], max_epochs=run.max_epochs, version=version)
        return _fit(study, trial, plan, run, trainer, model, dm)


def _start(study: Any, space: dict[str, Any], bounds: tuple, run: TuneRun, alive: contextlib.ExitStack) -> tuple:
    """Rank 0: ask for a trial and start its heartbeat at once (before the model and the trainer are built: a
    trial is judged stale from its start). A trial another worker failed as stale before its first beat (this
    process stalled in between) stays FAIL, and a new one is asked: every rank still trains one trial."""
    for _ in range(_ASKS - 1):
        try:
            return _ask_and_beat(study, space, bounds, run, alive)
        except Exception as err:
            if not _finished_error(err):
                raise
            rank_zero_warn("tune_cycle_length: a trial was finished by another worker before it started here (its"
                           " heartbeat looked stale: this process or the storage stalled); asking for another.")
    return _ask_and_beat(study, space, bounds, run, alive)


def _ask_and_beat(study: Any, space: dict[str, Any], bounds: tuple, run: TuneRun, alive: contextlib.ExitStack) -> tuple:
    with storage_errors(storage_of(study)):
        trial, plan = ask(study, space, bounds, run)
        if run.study.storage is not None:
            beating = Heartbeat(storage_of(study), trial_id_of(trial), run.study.heartbeat_interval, run.study.grace)
            alive.enter_context(beating)
    return trial, plan


_ASKS = 3  # a worker stalled that often between asking and its first beat has a problem a retry will not fix


def _fit(study: Any, trial: Any, plan: Optional[TrialPlan], run: TuneRun, trainer: pl.Trainer, model: Any,
         dm: Any) -> int:
    """Train the trial on this rank; rank 0 tells its result. Returns the epochs trained."""
    try:
        trainer.fit(model, datamodule=dm)
    except Exception as err:
        if _lost(study, trial, err):
            return trainer.current_epoch
        storage_fault = _storage_fault(err)
        if storage_fault is not None:  # nothing more can be written: the heartbeat sweep fails the trial
            raise StorageError(storage_fault) from err
        if trial is not None:
            with storage_errors(storage_of(study)):
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
                study.tell(trial, state=TrialState.FAIL)
            rank_zero_warn(f"tune_cycle_length: trial {trial.number} failed with {type(err).__name__}: {err}")
        if trainer.world_size > 1:
            raise  # the other ranks are gone (Lightning ends them): the study cannot go on in this run
        return trainer.current_epoch
    if trial is None:
        return trainer.current_epoch
    if _lost(study, trial):
        return trainer.current_epoch
    with storage_errors(storage_of(study)):
        return _tell(study, trial, trainer, run, plan)


def _lost(study: Any, trial: Any, err: Optional[BaseException] = None) -> bool:
    """Whether another worker finished this trial while it trained here (its stale-trial sweep saw no heartbeat:
    this process or the storage stalled). One warning, and the worker goes on with its next trial."""
    lost = err is not None and _finished_error(err)
    if trial is not None and not lost:
        lost = finished_elsewhere(storage_of(study), trial_id_of(trial))
    if lost:
        which = f"trial {trial.number}" if trial is not None else "the trial"
        rank_zero_warn(f"tune_cycle_length: {which} was finished by another worker while it trained here (its"
                       " heartbeat looked stale: this process or the storage stalled); going on with the next trial.")
    return lost


def _finished_error(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is Optuna refusing to update a finished trial: its
    ``UpdateFinishedTrialError`` (Optuna >= 4.1; a ``RuntimeError`` with the same message before), on this rank
    or broadcast from rank 0 in another rank's message."""
    seen: Optional[BaseException] = err
    while seen is not None:
        text = f"{type(seen).__name__}: {seen}"
        if "UpdateFinishedTrialError" in text or "has already finished and can not be updated" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _storage_fault(err: BaseException) -> Optional[str]:
    """The one-line message of a storage failure raised inside a fit (on this rank or broadcast from rank 0)."""
    seen: Optional[BaseException] = err
    while seen is not None:
        if isinstance(seen, StorageError):
            return str(seen)
        text = str(seen)
        if "StorageError on global rank 0" in text:
            return text.split(": ", 1)[1] if ": " in text else text
        seen = seen.__cause__ or seen.__context__
    return None


def _tell(study: Any, trial: Any, trainer: pl.Trainer, run: TuneRun, plan: TrialPlan) -> int:
    frozen = void_stale_error(trial, storage_of(study).get_trial(trial_id_of(trial)))  # also what a spawned child wrote
    epochs = max((int(k) for k in frozen.user_attrs.get("history", {})), default=trainer.current_epoch)
    if "pruned_at_epoch" in frozen.user_attrs:
        study.tell(trial, state=TrialState.PRUNED)
        return epochs
    values = frozen.intermediate_values
    value = values[max(values)] if values else None
    if frozen.user_attrs.get("error") or value is None or math.isnan(value):
        if not frozen.user_attrs.get("error"):
            trial.set_user_attr("error", _failure(frozen, value, run.monitor))
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)
    return epochs


def _at(epoch: Optional[int]) -> str:
    return f" at epoch {epoch}" if epoch is not None else ""


def _failure(frozen: Any, value: Optional[float], monitor: str) -> str:
    """Why a trial that raised nothing has no usable value."""
    if value is None and "stopped_at_epoch" in frozen.user_attrs:
        return (
            f"stopped at epoch {frozen.user_attrs['stopped_at_epoch']} by another callback (EarlyStopping?)"
            f" before its first cycle end{_at(frozen.user_attrs.get('first_cycle_end'))}; only cycle-end values are"
            " compared."
            f" Give EarlyStopping a patience of at least 2 * max_half_cycle_epochs validations."
        )
    return f"the monitored metric {monitor!r} was {value} at the end of the trial"
