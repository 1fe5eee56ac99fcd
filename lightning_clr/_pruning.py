"""DDP-safe Optuna pruning for CLR trials, judged only at cycle ends.

Why not optuna-integration's ``PyTorchLightningPruningCallback``: under ``strategy="ddp"``, torchrun or
SLURM every rank asks for its own trial and trains with its own cycle length (optuna-integration #59).
Here global rank 0 alone talks to Optuna. The trial's values travel to every rank with
``trainer.strategy.broadcast`` in the ``setup`` hook, where the process group exists and before any
training step; the prune decision travels the same way, and every rank stops together through
``trainer.should_stop`` (raising ``TrialPruned`` on one rank would deadlock the others).

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
from lightning_clr._tuning_args import _distributed
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.range_test._rules import DEFAULT_BASE_DIVISOR


class CycleEndMedianPruner(optuna.pruners.BasePruner):
    """Prune a trial at one of its cycle ends if its best value so far is worse than the median of the
    other finished trials' best values reported up to the same epoch.

    The tuner reports a trial's metric only at its cycle ends (where the LR is back at ``base_lr``), with the
    epoch as step, so a trial is never compared with another one caught mid-cycle with its LR high. A long
    cycle is compared with shorter ones at its own first cycle end, against their values at no later epoch.

    Args:
        n_startup_trials: Completed trials needed before anything is pruned.
        n_min_trials: Other trials with a value at or before the epoch needed to judge.

    Example:
        >>> study = optuna.create_study(pruner=CycleEndMedianPruner(n_startup_trials=2))  # doctest: +SKIP
    """

    def __init__(self, n_startup_trials: int = 2, n_min_trials: int = 1) -> None:
        if n_startup_trials < 0 or n_min_trials < 1:
            raise ValueError(f"need n_startup_trials >= 0, n_min_trials >= 1; got {n_startup_trials}, {n_min_trials}")
        self.n_startup_trials = n_startup_trials
        self.n_min_trials = n_min_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        own = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not own:
            return True
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.n_startup_trials:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = max if maximize else min
        others = []
        for t in completed:
            values = [v for s, v in t.intermediate_values.items() if s <= step and not math.isnan(v)]
            if values:
                others.append(best(values))
        if len(others) < self.n_min_trials:
            return False
        others.sort()
        n = len(others)
        median = others[n // 2] if n % 2 else 0.5 * (others[n // 2 - 1] + others[n // 2])
        mine = best(own)
        return mine < median if maximize else mine > median


class TrialCallback(*callback_bases()):  # type: ignore[misc]  # a Callback of either Lightning package
    """Runs one trial's CLR configuration and its pruning on every rank of a (possibly distributed) fit.

    Rank 0 of the asking process builds it with ``payload`` (the trial's values) and ``trial``; other ranks
    build it with ``payload=None``. In ``setup`` rank 0's payload is broadcast, the ``CyclicLearningRate``
    instance is re-initialized with it, and ``max_epochs`` is set to a whole number of cycles.
    After a spawn (``ddp_spawn``/``ddp_fork``) the trial is re-opened from ``storage`` by name.

    Example:
        >>> cb = TrialCallback(clr, payload, trial=trial, monitor="val_loss")  # doctest: +SKIP
    """

    def __init__(
        self,
        clr: CyclicLearningRate,
        payload: Optional[dict[str, Any]],
        trial: Any = None,
        monitor: str = "val_loss",
        storage: Optional[str] = None,
        study_name: Optional[str] = None,
    ) -> None:
        self.clr = clr
        self.payload = payload
        self.trial = trial
        self.monitor = monitor
        self.storage = storage
        self.study_name = study_name
        self.pruner = trial.study.pruner if trial is not None else None  # picklable: a spawned child re-opens with it
        self.history: dict[int, float] = {}

    def __getstate__(self) -> dict[str, Any]:  # a spawned child re-opens the trial from storage
        state = self.__dict__.copy()
        state["trial"] = None
        return state

    def _trial(self) -> Any:
        if self.trial is None and self.storage is not None and self.payload is not None:
            from lightning_clr._storage import make_storage

            storage = make_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
            self.trial = optuna.trial.Trial(study, self.payload["trial_id"])
        return self.trial

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        destroy_process_group_at_exit()
        self.payload = trainer.strategy.broadcast(self.payload if trainer.global_rank == 0 else None, src=0)
        p = self.payload
        if trainer.global_rank != 0:
            pl.seed_everything(p["seed"], verbose=False)
        CyclicLearningRate.__init__(
            self.clr,
            base_lr=p["base_lr"],
            max_lr=p["max_lr"],
            half_cycle_epochs=p["half_cycle_epochs"],
            fit_whole_cycles=False,
            mode=p["mode"],
            gamma=p["gamma"],
            range_test=self.clr.range_test,
        )
        trainer.fit_loop.max_epochs = p["epochs"]
        self.history = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self.history[epoch] = float(value)
        if epoch % (2 * self.payload["half_cycle_epochs"]):
            return  # mid-cycle: recorded, never judged
        decision: Any = None  # rank 0's: None (go on), "stop" (pruned or NaN) or an error to raise on every rank
        if trainer.global_rank == 0:
            try:
                decision = self._judge(trainer, epoch, value)
            except Exception as err:  # raised on every rank below: one rank raising alone would hang the others
                message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
                decision = (type(err).__name__, message)
        decision = trainer.strategy.broadcast(decision, src=0)
        if isinstance(decision, tuple):
            if decision[0] == "KeyError":
                raise KeyError(decision[1])
            raise RuntimeError(f"{decision[0]} on global rank 0 at a cycle end: {decision[1]}")
        if decision == "stop":  # every rank stops together
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0: a fit that another callback (EarlyStopping) ended mid-cycle leaves its history and epoch."""
        last = max(self.history, default=0)
        if trainer.global_rank != 0 or self.payload is None or last % (2 * self.payload["half_cycle_epochs"]) == 0:
            return
        trial = self._trial()
        self._save_history(trial)
        trial.set_user_attr("stopped_at_epoch", last)

    def _save_history(self, trial: Any) -> None:
        trial.set_user_attr("history", {str(k): v for k, v in self.history.items()})

    def _judge(self, trainer: pl.Trainer, epoch: int, value: Any) -> Optional[str]:
        """Rank 0 at a cycle end: report to Optuna and decide."""
        trial = self._trial()
        if value is None:
            raise KeyError(
                f"tune_cycle_length: the monitored metric {self.monitor!r} was not logged by epoch {epoch};"
                f" logged: {sorted(trainer.callback_metrics)}"
            )
        self._save_history(trial)
        trial.set_user_attr("steps_per_epoch", self.clr.steps_per_epoch)
        if math.isnan(float(value)):  # diverged: a failed trial, not a pruned one
            trial.set_user_attr("error", f"the monitored metric {self.monitor!r} is NaN at epoch {epoch}")
            return "stop"
        trial.report(float(value), step=epoch)
        if epoch < trainer.fit_loop.max_epochs and trial.should_prune():
            trial.set_user_attr("pruned_at_epoch", epoch)
            return "stop"
        return None


_DESTROY_REGISTERED = False


def destroy_process_group_at_exit() -> None:
    """Destroy torch.distributed's process group when this process exits, once per process.

    Lightning does this for NCCL only. A gloo group left alive at interpreter exit sometimes aborts the
    process ("terminate called without an active exception", SIGABRT) after a successful run; seen here with
    torch 2.13 in about one 2-rank run in ten.
    """
    global _DESTROY_REGISTERED
    import torch.distributed as dist

    if _DESTROY_REGISTERED or not (dist.is_available() and dist.is_initialized()):
        return
    import atexit

    from lightning.fabric.utilities.distributed import _destroy_dist_connection

    atexit.register(_destroy_dist_connection)
    _DESTROY_REGISTERED = True


class BoundsCallback(*callback_bases()):  # type: ignore[misc]
    """Find the study's LR bounds once: rank 0 broadcasts bounds already stored in the study (the range test is
    then skipped); otherwise the ``CyclicLearningRate`` runs its range test in ``on_train_start``. Rank 0 stores
    the bounds in the study's ``user_attrs`` and the fit stops before its first training step.
    """

    def __init__(
        self, clr: CyclicLearningRate, known: Any, study: Any, storage: Optional[str], study_name: Any
    ) -> None:
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
            CyclicLearningRate.__init__(self.clr, base_lr=self.known[0], max_lr=self.known[1])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True  # after the CyclicLearningRate's range test: no training step
        if trainer.global_rank != 0 or self.known is not None:
            return
        study = self.study
        if study is None:
            from lightning_clr._storage import make_storage

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


def find_bounds(study: Any, args: Any, make_trainer: Callable[..., pl.Trainer], build: Callable[[], Any]) -> tuple:
    """The LR bounds shared by every trial: the user's, those stored in the study, or one range test (all ranks)."""
    known = None
    if study is not None:
        attrs = study.user_attrs
        if "clr_base_lr" in attrs:
            known = (args.base_lr or attrs["clr_base_lr"], args.max_lr or attrs["clr_max_lr"])
            if known[1] <= known[0]:
                if args.base_lr:
                    known = (known[0], known[0] * DEFAULT_BASE_DIVISOR)
                else:
                    known = (known[1] / DEFAULT_BASE_DIVISOR, known[1])
    if known is not None and not _distributed(args.trainer_kwargs or {}):
        return _announce(known)  # one process: no other rank needs the bounds broadcast in a fit
    clr = CyclicLearningRate(base_lr=args.base_lr, max_lr=args.max_lr, range_test=args.range_test)
    cb = BoundsCallback(clr, known, study, args.storage, args.study_name)
    pl.seed_everything(args.seed, verbose=False)
    model, dm = build()
    trainer = make_trainer([clr, cb], max_epochs=1, logger=False)
    trainer.fit(model, datamodule=dm)
    if study is None:
        return (None, None)
    if "clr_base_lr" not in study.user_attrs:
        raise RuntimeError("tune_cycle_length: the range test stored no bounds in the study")
    attrs = study.user_attrs
    return _announce((args.base_lr or attrs["clr_base_lr"], args.max_lr or attrs["clr_max_lr"]))


def _announce(bounds: tuple) -> tuple:
    rank_zero_info(
        f"tune_cycle_length: every trial uses base_lr={bounds[0]:.4g}, max_lr={bounds[1]:.4g} (stored in the study)."
    )
    return bounds


def run_trial(
    study: Any,
    space: dict[str, Any],
    index: int,
    bounds: tuple,
    args: Any,
    budget: int,
    make_trainer: Callable[..., pl.Trainer],
    build: Callable[[], Any],
) -> int:
    """Run one trial on this rank; rank 0 (``study`` given) asks and tells. Returns the epochs trained."""
    from lightning_clr._storage import Heartbeat

    trial = payload = None
    seed = args.seed + index
    if study is not None:
        trial = study.ask(space)
        h = int(trial.params["half_cycle_epochs"])
        base, high = bounds
        scale = float(trial.params.get("max_lr_scale", args.min_max_lr_scale))
        if base is not None and high is not None and scale != 1.0:
            high = base + (high - base) * scale  # > base for every scale > 0
        seed = args.seed + trial.number
        payload = dict(
            trial_id=trial._trial_id, number=trial.number, seed=seed, half_cycle_epochs=h,
            mode=trial.params.get("mode", args.modes[0]), gamma=1.0, base_lr=base, max_lr=high,
            epochs=2 * h * max(1, round(budget / (2 * h))),
        )
        for key in ("mode", "base_lr", "max_lr", "epochs", "seed"):
            trial.set_user_attr(key, payload[key])
    pl.seed_everything(seed, verbose=False)
    model, dm = build()  # right after seeding: trial n's initial weights depend on seed + n only
    clr = CyclicLearningRate(base_lr=1.0, max_lr=1.0, range_test=args.range_test)  # re-initialized in setup
    cb = TrialCallback(clr, payload, trial, args.monitor, args.storage, args.study_name)
    version = f"trial_{payload['number']}" if payload else f"trial_rank_{index}"
    trainer = make_trainer([clr, cb], max_epochs=payload["epochs"] if payload else budget, version=version)
    try:
        if trial is not None and args.storage is not None:
            with Heartbeat(study._storage, trial._trial_id, args.heartbeat_interval):
                trainer.fit(model, datamodule=dm)
        else:
            trainer.fit(model, datamodule=dm)
    except Exception as err:
        if trial is not None:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            study.tell(trial, state=TrialState.FAIL)
            rank_zero_warn(f"tune_cycle_length: trial {trial.number} failed with {type(err).__name__}: {err}")
        if trainer.world_size > 1:
            raise  # the other ranks are gone (Lightning ends them): the study cannot go on in this run
        return trainer.current_epoch
    if trial is None:
        return trainer.current_epoch
    frozen = study._storage.get_trial(trial._trial_id)  # also what a spawned child wrote
    epochs = max((int(k) for k in frozen.user_attrs.get("history", {})), default=trainer.current_epoch)
    if "pruned_at_epoch" in frozen.user_attrs:
        study.tell(trial, state=TrialState.PRUNED)
        return epochs
    values = frozen.intermediate_values
    value = values[max(values)] if values else None
    if "error" in frozen.user_attrs or value is None or math.isnan(value):
        if "error" not in frozen.user_attrs:
            trial.set_user_attr("error", _failure(frozen, value, args.monitor, payload["half_cycle_epochs"]))
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
