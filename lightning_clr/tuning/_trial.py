"""One trial of :func:`lightning_clr.tune_cycle_length` on every rank, built on :class:`CyclePruningCallback`,
and the one range test per study that finds the LR bounds shared by every trial.

Why not optuna-integration's ``PyTorchLightningPruningCallback``: under ``strategy="ddp"``, torchrun or
SLURM every rank asks for its own trial and trains with its own cycle length (optuna-integration #59).
Here global rank 0 alone talks to Optuna; the trial's values travel to every rank with
``trainer.strategy.broadcast`` in ``setup``, before any training step, and the prune decision the same way.

Only imported once optuna is known to be installed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import optuna
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from optuna.trial import TrialState

from lightning_clr._compat import callback_bases
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO
from lightning_clr.range_test._rules import DEFAULT_BASE_DIVISOR
from lightning_clr.tuning._config import TuneRun
from lightning_clr.tuning._env import distributed
from lightning_clr.tuning._pruning_callback import CyclePruningCallback, _configure
from lightning_clr.tuning._storage import Heartbeat, StorageError, make_storage, storage_errors


class TrialCallback(CyclePruningCallback):
    """A :class:`CyclePruningCallback` that also carries the tuner's whole trial (bounds, mode, seed, epochs).

    Rank 0 builds it with ``payload`` and ``trial``; other ranks with ``None``. In ``setup`` the payload is
    broadcast, the ``CyclicLearningRate`` is re-configured with it and ``max_epochs`` set to whole cycles. Rank 0
    also keeps every epoch's value (``history``) in the trial's user attributes; a NaN fails the trial.

    Example:
        >>> cb = TrialCallback(payload, trial=trial, monitor="val_loss")  # doctest: +SKIP
    """

    def __init__(self, payload: Optional[dict[str, Any]], trial: Any = None, monitor: str = "val_loss") -> None:
        super().__init__(trial, monitor, whole_cycles=False)
        self.payload = payload
        self.history: dict[int, float] = {}

    def _rank_zero_params(self, trainer: pl.Trainer) -> dict[str, Any]:
        return dict(self.payload or {}) if trainer.global_rank == 0 else {}

    def _sync(self, trainer: pl.Trainer, clr: CyclicLearningRate) -> None:
        self.payload = p = trainer.strategy.broadcast(self._rank_zero_params(trainer), src=0)
        self.params = {"half_cycle_epochs": p["half_cycle_epochs"]}
        if trainer.global_rank != 0:
            pl.seed_everything(p["seed"], verbose=False)
        _configure(
            clr, base_lr=p["base_lr"], max_lr=p["max_lr"], half_cycle_epochs=p["half_cycle_epochs"],
            fit_whole_cycles=False, mode=p["mode"], gamma=p["gamma"], range_test=clr.range_test,
            final_lr_ratio=DEFAULT_FINAL_LR_RATIO,  # the study's bounds are automatic: the automatic tail, as always
        )
        trainer.fit_loop.max_epochs = p["epochs"]
        self.history = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self.history[trainer.current_epoch + 1] = float(value)
        super().on_train_epoch_end(trainer, pl_module)

    def _judge(self, trainer: pl.Trainer, epoch: int) -> Optional[str]:
        trial = self._trial()
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"tune_cycle_length: the monitored metric {self.monitor!r} was not logged by epoch {epoch};"
                f" logged: {sorted(trainer.callback_metrics)}"
            )
        with storage_errors(trial.study._storage):
            self._save_history(trial)
            trial.set_user_attr("steps_per_epoch", find_steps_per_epoch(trainer))
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
        if trainer.global_rank != 0 or not self.payload or last % (2 * self.payload["half_cycle_epochs"]) == 0:
            return
        trial = self._trial()
        with storage_errors(trial.study._storage):
            self._save_history(trial)
            trial.set_user_attr("stopped_at_epoch", last)

    def _save_history(self, trial: Any) -> None:
        trial.set_user_attr("history", {str(k): v for k, v in self.history.items()})


def find_steps_per_epoch(trainer: pl.Trainer) -> Optional[int]:
    clr = next((c for c in trainer.callbacks if isinstance(c, CyclicLearningRate)), None)
    return clr.steps_per_epoch if clr is not None else None


class BoundsCallback(*callback_bases()):  # a Callback of either Lightning package
    """Find the study's LR bounds once: rank 0 broadcasts bounds already stored in the study (the range test is
    then skipped); otherwise the ``CyclicLearningRate`` runs its range test in ``on_train_start``. Rank 0 stores
    the bounds in the study's ``user_attrs`` and the fit stops before its first training step.
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
            _configure(self.clr, base_lr=self.known[0], max_lr=self.known[1])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True  # after the CyclicLearningRate's range test: no training step
        if trainer.global_rank != 0 or self.known is not None:
            return
        study = self.study
        if study is None:
            study = optuna.load_study(study_name=self.study_name, storage=make_storage(self.storage))
        study.set_user_attr("clr_base_lr", float(_first(self.clr.base_lr)))
        study.set_user_attr("clr_max_lr", float(_first(self.clr.max_lr)))
        result = self.clr.range_test_result
        if result is not None and hasattr(result, "to_dict"):
            try:
                study.set_user_attr("clr_range_test", {k: v for k, v in result.to_dict().items() if k != "lrs"})
            except Exception:  # not JSON-serializable: the bounds are what matters
                pass


def _first(value: Any) -> float:
    return value[0] if isinstance(value, (list, tuple)) else value


def find_bounds(study: Any, run: TuneRun, make_trainer: Callable[..., pl.Trainer], build: Callable[[], Any]) -> tuple:
    """The LR bounds shared by every trial: the user's, those stored in the study, or one range test (all ranks)."""
    known = None
    if study is not None:
        attrs = study.user_attrs
        if "clr_base_lr" in attrs:
            known = (run.base_lr or attrs["clr_base_lr"], run.max_lr or attrs["clr_max_lr"])
            if known[1] <= known[0]:
                if run.base_lr:
                    known = (known[0], known[0] * DEFAULT_BASE_DIVISOR)
                else:
                    known = (known[1] / DEFAULT_BASE_DIVISOR, known[1])
    if known is not None and not distributed(run.trainer_kwargs):
        return _announce(known)  # one process: no other rank needs the bounds broadcast in a fit
    clr = CyclicLearningRate(base_lr=run.base_lr, max_lr=run.max_lr, range_test=run.range_test)
    cb = BoundsCallback(clr, known, study, run.study.storage, run.study.study_name)
    pl.seed_everything(run.study.seed, verbose=False)
    model, dm = build()
    trainer = make_trainer([clr, cb], max_epochs=1, logger=False)
    trainer.fit(model, datamodule=dm)
    if study is None:
        return (None, None)
    if "clr_base_lr" not in study.user_attrs:
        raise RuntimeError("tune_cycle_length: the range test stored no bounds in the study")
    attrs = study.user_attrs
    return _announce((run.base_lr or attrs["clr_base_lr"], run.max_lr or attrs["clr_max_lr"]))


def _announce(bounds: tuple) -> tuple:
    rank_zero_info(
        f"tune_cycle_length: every trial uses base_lr={bounds[0]:.4g}, max_lr={bounds[1]:.4g} (stored in the study)."
    )
    return bounds


def ask(study: Any, space: dict[str, Any], bounds: tuple, run: TuneRun) -> tuple[Any, dict[str, Any]]:
    """Rank 0: a new trial and the payload every rank trains it with."""
    trial = study.ask(space)
    h = int(trial.params["half_cycle_epochs"])
    base, high = bounds
    scale = float(trial.params.get("max_lr_scale", run.search.min_max_lr_scale))
    if base is not None and high is not None and scale != 1.0:
        high = base + (high - base) * scale  # > base for every scale > 0
    payload = dict(
        trial_id=trial._trial_id, number=trial.number, seed=run.study.seed + trial.number, half_cycle_epochs=h,
        mode=trial.params.get("mode", run.search.modes[0]), gamma=1.0, base_lr=base, max_lr=high,
        epochs=2 * h * max(1, round(run.budget / (2 * h))),
    )
    for key in ("mode", "base_lr", "max_lr", "epochs", "seed"):
        trial.set_user_attr(key, payload[key])
    return trial, payload


def run_trial(
    study: Any, space: dict[str, Any], index: int, bounds: tuple, run: TuneRun,
    make_trainer: Callable[..., pl.Trainer], build: Callable[[], Any],
) -> int:
    """Run one trial on this rank; rank 0 (``study`` given) asks and tells. Returns the epochs trained."""
    trial = payload = None
    seed = run.study.seed + index
    if study is not None:
        with storage_errors(study._storage):
            trial, payload = ask(study, space, bounds, run)
        seed = payload["seed"]
    pl.seed_everything(seed, verbose=False)
    model, dm = build()  # right after seeding: trial n's initial weights depend on seed + n only
    clr = CyclicLearningRate(base_lr=1.0, max_lr=1.0, range_test=run.range_test)  # re-configured in setup
    cb = TrialCallback(payload, trial, run.monitor)
    version = f"trial_{payload['number']}" if payload else f"trial_rank_{index}"
    trainer = make_trainer([clr, cb], max_epochs=payload["epochs"] if payload else run.budget, version=version)
    try:
        if trial is not None and run.study.storage is not None:
            with Heartbeat(study._storage, trial._trial_id, run.study.heartbeat_interval):
                trainer.fit(model, datamodule=dm)
        else:
            trainer.fit(model, datamodule=dm)
    except Exception as err:
        storage_fault = _storage_fault(err)
        if storage_fault is not None:  # nothing more can be written: the heartbeat sweep fails the trial
            raise StorageError(storage_fault) from err
        if trial is not None:
            with storage_errors(study._storage):
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
                study.tell(trial, state=TrialState.FAIL)
            rank_zero_warn(f"tune_cycle_length: trial {trial.number} failed with {type(err).__name__}: {err}")
        if trainer.world_size > 1:
            raise  # the other ranks are gone (Lightning ends them): the study cannot go on in this run
        return trainer.current_epoch
    if trial is None:
        return trainer.current_epoch
    with storage_errors(study._storage):
        return _tell(study, trial, trainer, run, payload)


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


def _tell(study: Any, trial: Any, trainer: pl.Trainer, run: TuneRun, payload: dict[str, Any]) -> int:
    frozen = study._storage.get_trial(trial._trial_id)  # also what a spawned child wrote
    epochs = max((int(k) for k in frozen.user_attrs.get("history", {})), default=trainer.current_epoch)
    if "pruned_at_epoch" in frozen.user_attrs:
        study.tell(trial, state=TrialState.PRUNED)
        return epochs
    values = frozen.intermediate_values
    value = values[max(values)] if values else None
    if "error" in frozen.user_attrs or value is None or math.isnan(value):
        if "error" not in frozen.user_attrs:
            trial.set_user_attr("error", _failure(frozen, value, run.monitor, payload["half_cycle_epochs"]))
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)
    return epochs


def _failure(frozen: Any, value: Optional[float], monitor: str, half_cycle: int) -> str:
    """Why a trial that raised nothing has no usable value."""
    if value is None and "stopped_at_epoch" in frozen.user_attrs:
        return (
            f"stopped at epoch {frozen.user_attrs['stopped_at_epoch']} by another callback (EarlyStopping?)"
            f" before its first cycle end at epoch {2 * half_cycle}; only cycle-end values are compared."
            f" Give EarlyStopping a patience of at least 2 * max_half_cycle_epochs validations."
        )
    return f"the monitored metric {monitor!r} was {value} at the end of the trial"
