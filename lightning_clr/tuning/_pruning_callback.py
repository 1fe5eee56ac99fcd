"""Pieces for your own Optuna objective: :func:`suggest_cycle` and :class:`CyclePruningCallback`.

The callback reports the monitored metric to the trial only at the CLR's cycle ends, where the LR is back at
``base_lr`` (mid-cycle, with the LR high, the loss says little about the cycle length), and prunes only there.

DDP: global rank 0 alone talks to Optuna. In ``setup`` rank 0's suggested half-cycle is broadcast, so ranks
without a trial (``strategy="ddp"`` and torchrun, where every rank runs the objective) train with it; every
prune decision, and any error on rank 0, is broadcast, every rank stops together (``trainer.should_stop``), and
``check_pruned()`` raises ``optuna.TrialPruned`` after the fit, never inside it (one rank raising alone would
hang the others). With ``ddp_spawn`` the trial is re-opened in the spawned rank 0 from the study's storage,
which must then be persistent (a journal file or a database).

Example:
    >>> def objective(trial):  # doctest: +SKIP
    ...     clr = suggest_cycle(trial, min_half_cycle_epochs=1, max_half_cycle_epochs=8, base_lr=1e-3, max_lr=1e-2)
    ...     pruning = CyclePruningCallback(trial, monitor="val_loss")
    ...     trainer = pl.Trainer(max_epochs=16, callbacks=[clr, pruning])
    ...     trainer.fit(MyModel(), datamodule=MyData())
    ...     pruning.check_pruned()
    ...     return trainer.callback_metrics["val_loss"].item()
"""

from __future__ import annotations

import atexit
from typing import Any, Optional

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info

from lightning_clr._compat import callback_bases
from lightning_clr._lightning import destroy_dist_connection
from lightning_clr._validation import ArgumentError, int_in
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.cycle_end._clock import find_cyclic_lr
from lightning_clr.schedule import whole_cycle_epochs
from lightning_clr.tuning._optuna import import_optuna, storage_of, trial_id_of

__all__ = ["CyclePruningCallback", "suggest_cycle"]

PARAM = "half_cycle_epochs"
PRUNED_KEY = "lightning_clr:pruned_at_epoch"
CLAIM_KEY = "lightning_clr:range_test_claim"  # on the trial whose fit runs the study's one range test


def suggest_cycle(
    trial: Any, *, min_half_cycle_epochs: int, max_half_cycle_epochs: int, **callback_kwargs: Any
) -> CyclicLearningRate:
    """Suggest the half-cycle length in epochs (the int parameter ``half_cycle_epochs``) and return a
    :class:`CyclicLearningRate` with it.

    ``fit_whole_cycles`` defaults to ``False`` here: the half-cycle is then exactly the suggested number of
    epochs, so every cycle end is an epoch end, where :class:`CyclePruningCallback` reports (that callback
    rounds ``max_epochs`` to whole cycles instead). Under ``strategy="ddp"`` or torchrun, ranks other than 0
    have no trial: pass ``trial=None`` there; the callback takes rank 0's suggestion when the fit starts.

    Without ``base_lr`` or ``max_lr``, the range test runs once per study: the first trial claims it (through
    the study's storage, so concurrent workers agree), its :class:`CyclePruningCallback` stores the bounds in
    the study's ``user_attrs``, and every later trial, of any worker, reuses them (a line says so); a worker
    whose trial starts while another's range test runs waits for its bounds.

    Args:
        trial: An ``optuna.Trial``, or ``None`` on a rank without one.
        min_half_cycle_epochs: Smallest half-cycle in epochs.
        max_half_cycle_epochs: Largest half-cycle in epochs.
        **callback_kwargs: Any other :class:`CyclicLearningRate` argument (``base_lr``, ``max_lr``, ``mode``...).

    Example:
        >>> clr = suggest_cycle(trial, min_half_cycle_epochs=2, max_half_cycle_epochs=10, base_lr=1e-3,
        ...                     max_lr=1e-2)  # doctest: +SKIP
    """
    low = int_in("min_half_cycle_epochs", min_half_cycle_epochs, 1)
    int_in("max_half_cycle_epochs", max_half_cycle_epochs, low, what="at least min_half_cycle_epochs")
    for name in (PARAM, "step_size_up", "step_size_down"):
        if name in callback_kwargs:
            raise ArgumentError(name, callback_kwargs[name], "left out: suggest_cycle suggests the cycle length")
    kwargs = {"fit_whole_cycles": False, **callback_kwargs}
    h = low if trial is None else int(trial.suggest_int(PARAM, low, max_half_cycle_epochs))
    clr = CyclicLearningRate(half_cycle_epochs=h, **kwargs)
    if trial is not None and clr.settings.needs_range_test:
        _study_bounds(trial, clr)
    return clr


def _study_bounds(trial: Any, clr: CyclicLearningRate) -> None:
    """Give ``clr`` the study's stored bounds, waiting for another worker's range test; or mark ``trial`` as the
    one whose fit runs the study's range test."""
    from lightning_clr.tuning._bounds import combine, shared_bounds
    from lightning_clr.tuning._storage import storage_errors

    with storage_errors(storage_of(trial.study)):
        stored, claimed = shared_bounds(trial.study, "suggest_cycle")
        if stored is None:
            if claimed:
                storage_of(trial.study).set_trial_system_attr(trial_id_of(trial), CLAIM_KEY, True)
            return
    s = clr.settings
    base, high = combine(stored, s.base_lr, s.max_lr, "suggest_cycle")
    clr.apply(s.replace(base_lr=base, max_lr=high))
    rank_zero_info(f"suggest_cycle: trial {trial.number} reuses the study's LR bounds base_lr={clr.base_lr},"
                   f" max_lr={clr.max_lr} (its one range test: no new one).")


def find_clr(trainer: pl.Trainer) -> CyclicLearningRate:
    """The trial's one :class:`~lightning_clr.CyclicLearningRate` (a clear error otherwise)."""
    return find_cyclic_lr(trainer, "CyclePruningCallback")


class CyclePruningCallback(*callback_bases()):  # a Callback of either Lightning package
    """Report ``monitor`` to an Optuna trial at the CLR's cycle ends only, and prune only there.

    At each training epoch end (after that epoch's validation) the finished cycles are counted from the
    :class:`CyclicLearningRate`'s optimizer steps and step sizes; when a new cycle has ended, rank 0 reports
    ``monitor`` with ``step`` = the epochs trained, asks the trial's pruner, and every rank acts on its
    answer. One report per epoch in which a cycle ended (a half-cycle shorter than an epoch can end several).

    Args:
        trial: The ``optuna.Trial`` (``None`` on ranks without one, see :func:`suggest_cycle`).
        monitor: A metric logged by the model, read from ``trainer.callback_metrics``.
        whole_cycles: Round ``max_epochs`` to a whole number of cycles (at least one), so that the fit ends at
            a cycle end and its last value is reported; needs a whole-epoch half-cycle (as suggested).

    Attributes:
        pruned_at_epoch: The epoch the trial was pruned at, or ``None``.
        reports: ``{epoch: value}`` reported on this rank (rank 0; other ranks keep the epochs only).

    Example:
        >>> pruning = CyclePruningCallback(trial, monitor="val_acc")  # doctest: +SKIP
        >>> trainer.fit(model)  # doctest: +SKIP
        >>> pruning.check_pruned()  # raises optuna.TrialPruned if the pruner stopped the fit  # doctest: +SKIP
    """

    def __init__(self, trial: Any, monitor: str = "val_loss", whole_cycles: bool = True) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ArgumentError("monitor", monitor, "the name of a logged metric")
        self.trial = trial
        self.monitor = monitor
        self.whole_cycles = whole_cycles
        self.pruned_at_epoch: Optional[int] = None
        self.reports: dict[int, float] = {}
        self.params: dict[str, Any] = {}
        self._cycles = 0
        self._claim = False  # rank 0 of the trial that runs the study's range test, until its bounds are stored
        self._monitor_check = "before the first validation"  # -> "pending" -> "done"
        self._ref: Optional[tuple[Any, Any, int, str]] = None  # (storage, pruner, trial id, study name): for a spawn
        if trial is not None:
            storage = storage_of(trial.study)
            in_memory = type(storage).__name__ == "InMemoryStorage"
            self._ref = (None if in_memory else storage, trial.study.pruner, trial_id_of(trial), trial.study.study_name)

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn: the child re-opens the trial from the storage
        state = self.__dict__.copy()
        if self.trial is not None and self._ref is not None and self._ref[0] is None:
            raise ValueError(
                "CyclePruningCallback: the trial's study is in memory, which spawned processes (ddp_spawn) cannot"
                " reach; create the study with a journal file or database storage"
            )
        state["trial"] = None
        return state

    # ------------------------------------------------------------------ rank 0 and Optuna
    def _trial(self) -> Any:
        if self.trial is None and self._ref is not None:
            optuna = import_optuna()

            storage, pruner, trial_id, name = self._ref
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
            self.trial = optuna.trial.Trial(study, trial_id)
        return self.trial

    def _rank_zero_params(self, trainer: pl.Trainer) -> dict[str, Any]:
        trial = self._trial() if trainer.global_rank == 0 else None
        return dict(trial.params) if trial is not None else {}

    def _sync(self, trainer: pl.Trainer, clr: CyclicLearningRate) -> None:
        """Every rank: take rank 0's suggested half-cycle (a callback with given step sizes keeps them) and rank 0's
        bounds (the study's, which rank 0 alone can read: every rank then runs the range test, or none does)."""
        s = clr.settings
        mine = (self._rank_zero_params(trainer), s.base_lr, s.max_lr) if trainer.global_rank == 0 else None
        params, base, high = trainer.strategy.broadcast(mine, src=0)
        self.params = params or {}
        changes: dict[str, Any] = {}
        h = self.params.get(PARAM)
        if h is not None and s.step_size_up is None and float(h) != s.half_cycle_epochs:
            changes["half_cycle_epochs"] = float(h)
        if (base, high) != (s.base_lr, s.max_lr):
            changes.update(base_lr=base, max_lr=high)
        if changes:
            clr.apply(s.replace(**changes))

    def _judge(self, trainer: pl.Trainer, epoch: int) -> Optional[str]:
        """Rank 0 at a cycle end: report and ask the pruner. ``"stop"`` to end the fit."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"the monitored metric {self.monitor!r} was not logged by epoch {epoch};"
                f" logged: {sorted(trainer.callback_metrics)}"
            )
        trial = self._trial()
        value = float(value)
        self.reports[epoch] = value
        if trial is None:
            return None
        trial.report(value, step=epoch)
        if epoch < trainer.fit_loop.max_epochs and trial.should_prune():
            storage_of(trial.study).set_trial_system_attr(trial_id_of(trial), PRUNED_KEY, epoch)
            return "stop"
        return None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        destroy_process_group_at_exit()
        clr = find_clr(trainer)
        self._sync(trainer, clr)
        self._cycles, self.pruned_at_epoch, self.reports = 0, None, {}
        self._claim = trainer.global_rank == 0 and self._holds_claim()
        self._monitor_check = "before the first validation"
        max_epochs = trainer.fit_loop.max_epochs
        h = clr.settings.half_cycle_epochs
        if self.whole_cycles and clr.step_size_up is None and max_epochs not in (None, -1) and float(h).is_integer():
            epochs = whole_cycle_epochs(max_epochs, int(h))
            if epochs != max_epochs:
                rank_zero_info(f"CyclePruningCallback: max_epochs {max_epochs} -> {epochs}, whole cycles of"
                               f" {2 * int(h)}.")
                trainer.fit_loop.max_epochs = epochs

    def _holds_claim(self) -> bool:
        """Rank 0: whether this trial claimed the study's range test (``suggest_cycle`` marked it)."""
        try:  # rank 0 alone, after the broadcast: a storage fault here is met again, broadcast, at a cycle end
            trial = self._trial()
            return trial is not None and bool(storage_of(trial.study).get_trial(trial_id_of(trial)).system_attrs.get(
                CLAIM_KEY))
        except Exception:
            return False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0 of the trial that claimed the study's range test: store its bounds (they are resolved by now)."""
        if not self._claim:
            return
        from lightning_clr.tuning._bounds import release, store_bounds

        clr, trial = find_clr(trainer), self._trial()
        if clr.plan is not None and clr.range_test_result is not None:  # not fast_dev_run's fallback bounds
            store_bounds(trial.study, clr.plan.base_lr, clr.plan.max_lr, clr.range_test_result)
        release(trial.study)
        self._claim = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._drop_claim()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._drop_claim()

    def _drop_claim(self) -> None:
        """A fit that ended before its range test's bounds were stored releases the claim: the next trial claims."""
        if self._claim:
            from lightning_clr.tuning._bounds import release

            self._claim = False
            release(self._trial().study)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the first real validation: a ``monitor`` the model does not log (a typo) is an error now, not
        at the first cycle end. A metric that only the training epoch's end logs gets until then."""
        if trainer.sanity_checking or self._monitor_check != "before the first validation":
            return
        self._monitor_check = "done" if self.monitor in trainer.callback_metrics else "pending"

    def _check_monitor(self, trainer: pl.Trainer) -> None:
        if self._monitor_check != "pending":
            return
        self._monitor_check = "done"
        if self.monitor not in trainer.callback_metrics:  # the same keys on every rank: every rank raises
            raise ArgumentError("monitor", self.monitor, "a metric that the model logs; after its first validation"
                                f" it logs {sorted(trainer.callback_metrics)}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._check_monitor(trainer)
        clr = find_clr(trainer)
        cycle = (clr.step_size_up or 0) + (clr.step_size_down or clr.step_size_up or 0)
        finished = clr.steps[0] // cycle if cycle and clr.steps else 0
        if finished <= self._cycles:
            return  # mid-cycle: never judged
        self._cycles = finished
        epoch = trainer.current_epoch + 1
        decision: Any = None  # rank 0's: None (go on), "stop", or an error to raise on every rank
        if trainer.global_rank == 0:
            try:
                decision = self._judge(trainer, epoch)
            except Exception as err:  # raised on every rank below: one rank raising alone would hang the others
                message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
                decision = (type(err).__name__, message)
        decision = trainer.strategy.broadcast(decision, src=0)
        if isinstance(decision, tuple):
            if decision[0] == "KeyError":
                raise KeyError(decision[1])
            raise RuntimeError(f"{decision[0]} on global rank 0 at a cycle end: {decision[1]}")
        if decision == "stop":  # every rank stops together
            self.pruned_at_epoch = epoch
            trainer.should_stop = True

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` if the pruner ended the fit (call it after ``trainer.fit``)."""
        optuna = import_optuna()

        epoch = self.pruned_at_epoch
        if epoch is None and self.trial is not None:  # after ddp_spawn, the decision is in the storage
            frozen = storage_of(self.trial.study).get_trial(trial_id_of(self.trial))
            epoch = frozen.system_attrs.get(PRUNED_KEY)
        if epoch is not None:
            raise optuna.TrialPruned(f"pruned at epoch {epoch}, a cycle end")


_DESTROY_REGISTERED = False


def destroy_process_group_at_exit() -> None:
    """Destroy torch.distributed's process group when this process exits, once per process.

    Lightning does this for NCCL only. A gloo group left alive at interpreter exit sometimes aborts the
    process ("terminate called without an active exception", SIGABRT) after a successful run (docs/evidence.md).
    """
    global _DESTROY_REGISTERED
    if _DESTROY_REGISTERED or not (dist.is_available() and dist.is_initialized()):
        return
    atexit.register(destroy_dist_connection())
    _DESTROY_REGISTERED = True
