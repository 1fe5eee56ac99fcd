"""Optuna tuning of the CLR cycle length: :func:`tune_cycle_length`.

Each trial is a real Lightning fit of the user's own LightningModule (and DataModule) with a
:class:`~lightning_clr.CyclicLearningRate` whose half-cycle (in epochs) Optuna suggests, judged by the same
:class:`~lightning_clr.CyclePruningCallback` a hand-written objective uses. Optuna is an optional dependency
(``pip install lightning-clr[tune]``), imported only when the function runs.

Example:
    >>> from lightning_clr import tune_cycle_length  # doctest: +SKIP
    >>> from lightning_clr.tuning import SearchSpace  # doctest: +SKIP
    >>> space = SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=8)  # doctest: +SKIP
    >>> result = tune_cycle_length(MyModel, MyDataModule, n_trials=8, max_epochs=16, base_lr=1e-3, max_lr=1e-2,
    ...                            search=space)  # doctest: +SKIP
    >>> result.best_half_cycle_epochs, result.best_step_size_up  # doctest: +SKIP
    (4, 120)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any, Callable, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_clr._compat import lightning_package
from lightning_clr._outputs import atomic_write_text, writable_dir
from lightning_clr._quiet import muted_banner
from lightning_clr._validation import ArgumentError, boolean, int_in, positive_float
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.engine._settings import CycleSettings, lr_bounds
from lightning_clr.range_test import RangeTestConfig
from lightning_clr.tuning._config import (
    OutputConfig,
    SearchSpace,
    StudyConfig,
    TuneRun,
    grouped,
    heuristic_half_cycles,
    optuna_space,
)
from lightning_clr.tuning._env import distributed, is_global_zero, spawns
from lightning_clr.tuning._optuna import import_optuna, storage_of
from lightning_clr.tuning._result import CycleTuningResult, result_of

__all__ = ["tune_cycle_length"]

MAX_EPOCHS = 10**6  # one trial's budget
ModelSource = Union[type[pl.LightningModule], Callable[..., pl.LightningModule]]
DataSource = Union[type[pl.LightningDataModule], Callable[..., pl.LightningDataModule], None]


def tune_cycle_length(
    model: ModelSource,
    datamodule: DataSource = None,
    *,
    model_kwargs: Optional[dict[str, Any]] = None,
    datamodule_kwargs: Optional[dict[str, Any]] = None,
    trainer_kwargs: Optional[dict[str, Any]] = None,
    n_trials: int = 10,
    timeout: Optional[float] = None,
    max_epochs: Optional[int] = None,
    monitor: str = "val_loss",
    base_lr: Union[float, list[float], None] = None,
    max_lr: Union[float, list[float], None] = None,
    range_test: Optional[RangeTestConfig] = None,
    range_test_per_trial: bool = False,
    search: SearchSpace = SearchSpace(),  # noqa: B008 (frozen: a shared default is safe)
    study: StudyConfig = StudyConfig(),  # noqa: B008
    output: OutputConfig = OutputConfig(),  # noqa: B008
) -> CycleTuningResult:
    """Tune the CLR half-cycle length (in epochs) with Optuna; every trial is a real Lightning fit.

    Args:
        model: A LightningModule class, or any factory; called as ``model(**model_kwargs)`` once per trial.
        datamodule: A LightningDataModule class or factory, called as ``datamodule(**datamodule_kwargs)``.
        model_kwargs: Keyword arguments for ``model``.
        datamodule_kwargs: Keyword arguments for ``datamodule``.
        trainer_kwargs: Keyword arguments of every trial's ``pl.Trainer``. ``callbacks`` are kept (fresh copies
            per trial); a ``CyclicLearningRate`` among them is replaced by the trial's.
        n_trials: Trials run by this call (by this worker, when several workers share a study).
        timeout: Stop starting new trials after this many seconds (single process only).
        max_epochs: Budget of every trial, the same for all (hence the same optimizer steps): each trial's cycle
            is fitted to it in whole cycles, as ``CyclicLearningRate`` fits any run. Default:
            ``trainer_kwargs["max_epochs"]`` or 20.
        monitor: Logged metric to optimize, reported at each cycle end of each trial.
        base_lr: Lower LR bound for every trial, one value or one per param group. With ``max_lr``: no range
            test runs.
        max_lr: Upper LR bound for every trial, one value or one per param group.
        range_test: Settings of the range test that runs ONCE per study when a bound is missing (claimed through
            the storage by the first worker; its bounds, one per param group, are stored in the study and reused by
            every trial and worker).
        range_test_per_trial: Run the range test in every trial instead.
        search: The search space (:class:`SearchSpace`, or a dict of its fields).
        study: Storage, sampler, pruner, seed and heartbeat (:class:`StudyConfig`, or a dict of its fields).
        output: Output directory, logger, plots, progress bar (:class:`OutputConfig`, or a dict of its fields).

    Returns:
        A :class:`CycleTuningResult` holding the study and the best cycle length in epochs and steps.

    Raises:
        StorageError: The storage failed (one line naming it and the cause); the running trial is left to the
            heartbeat sweep of the next worker.

    Example:
        >>> result = tune_cycle_length(MyModel, MyDataModule, n_trials=8, trainer_kwargs={"limit_val_batches": 20},
        ...                            study=StudyConfig(storage="tune.journal", study_name="clr"))  # doctest: +SKIP
    """
    run = _validate(TuneRun(**locals()))
    with muted_banner(not run.output.verbose):  # every trial builds a Trainer: no banner for each
        return _tune(run)


def _tune(run: TuneRun) -> CycleTuningResult:
    """Open the study, find the shared bounds, run the trials, write the outputs."""
    optuna = import_optuna()
    from lightning_clr.tuning import _storage
    from lightning_clr.tuning._trial import find_bounds, run_trial

    trainer_kwargs = dict(run.trainer_kwargs)
    if spawns(trainer_kwargs.get("strategy")) and run.study.storage is None:
        journal = os.path.join(run.output.output_dir, "study.journal")
        run = dataclasses.replace(run, study=dataclasses.replace(run.study, storage=journal))
        rank_zero_info(
            f"tune_cycle_length: strategy={trainer_kwargs.get('strategy')!r} trains in child processes, which cannot"
            f" reach an in-memory study; using the journal file {journal!r}."
        )
    if is_global_zero():  # outputs go there at the end: a directory that cannot be written fails before training
        writable_dir("output.output_dir", run.output.output_dir)
    the_study = _open_study(optuna, run) if is_global_zero() else None
    if the_study is not None:
        run = dataclasses.replace(run, study=dataclasses.replace(run.study, study_name=the_study.study_name))
    make_trainer, build = _factories(run)
    if not distributed(trainer_kwargs) and not spawns(trainer_kwargs.get("strategy")):
        _probe_monitor(run, build)
    space = optuna_space(optuna, run.search)
    bounds: tuple = (run.base_lr, run.max_lr)
    if run.range_test_per_trial:
        bounds = (None, None)
    elif run.base_lr is None or run.max_lr is None:
        bounds = find_bounds(the_study, run, make_trainer, build)
    if the_study is not None and run.search.warm_start:
        _warm_start(the_study, run.search, space)
    start, epochs_trained = time.monotonic(), 0
    bar = _progress(run.n_trials, run.output.progress_bar and the_study is not None)
    for i in range(run.n_trials):
        if run.timeout is not None and time.monotonic() - start > run.timeout:
            rank_zero_info(f"tune_cycle_length: timeout of {run.timeout:g} s reached after {i} trials.")
            break
        if the_study is not None and run.study.storage is not None:
            with _storage.storage_errors(storage_of(the_study)):
                stale = _storage.fail_stale_trials(the_study, run.study.grace)
            if stale:
                rank_zero_warn(f"tune_cycle_length: marked stale RUNNING trials {stale} as FAIL (no heartbeat).")
        epochs_trained += run_trial(the_study, space, i, bounds, run, make_trainer, build)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result = result_of(the_study, run.monitor, run.study.direction, epochs_trained, bounds)
    if the_study is not None:
        _write_outputs(result, run.output)
    return result


def _validate(run: TuneRun) -> TuneRun:
    """Check every argument before any training step (errors name the argument and its value); return the run
    normalized: dicts for the keyword arguments, the groups as objects, bounds as tuples, ``max_epochs`` the
    budget of every trial (out of ``trainer_kwargs``)."""
    if not callable(run.model):
        raise ArgumentError("model", run.model, "a LightningModule class or a factory returning one")
    if run.datamodule is not None and not callable(run.datamodule):
        raise ArgumentError("datamodule", run.datamodule, "None, a LightningDataModule class or a factory")
    for name in ("model_kwargs", "datamodule_kwargs", "trainer_kwargs"):
        if getattr(run, name) is not None and not isinstance(getattr(run, name), dict):
            raise ArgumentError(name, getattr(run, name), "a dict of keyword arguments or None")
    int_in("n_trials", run.n_trials, 1)
    if run.max_epochs is not None:
        int_in("max_epochs", run.max_epochs, 1, MAX_EPOCHS, what="or None")
    if run.timeout is not None:
        positive_float("timeout", run.timeout)
    base, high = lr_bounds("base_lr", run.base_lr), lr_bounds("max_lr", run.max_lr)  # learning rates, by name
    if base is not None and high is not None:
        CycleSettings(base_lr=base, max_lr=high)  # one value or one per group, max_lr >= base_lr in each
        n = max(len(base), len(high))
        if any(h <= b for b, h in zip(base * (n // len(base)), high * (n // len(high)))):
            raise ArgumentError("max_lr", run.max_lr, f"greater than base_lr ({run.base_lr!r})")
    if run.range_test is not None and not isinstance(run.range_test, RangeTestConfig):
        raise ArgumentError("range_test", run.range_test, "None or a RangeTestConfig")
    if not isinstance(run.monitor, str) or not run.monitor:
        raise ArgumentError("monitor", run.monitor, "the name of a logged metric")
    boolean("range_test_per_trial", run.range_test_per_trial)
    search = grouped("search", run.search, SearchSpace)
    if run.range_test_per_trial and search.tunes_scale:
        raise ArgumentError("range_test_per_trial", True, "False when the max_lr multiplier is tuned")
    trainer_kwargs = dict(run.trainer_kwargs or {})
    user_max_epochs = trainer_kwargs.pop("max_epochs", None)
    if user_max_epochs is not None:  # checked even when `max_epochs` overrides it: a NaN there is a mistake
        int_in("trainer_kwargs['max_epochs']", user_max_epochs, 1, MAX_EPOCHS, what="every trial needs a finite budget")
    if run.timeout is not None and distributed(trainer_kwargs):
        raise ArgumentError("timeout", run.timeout, "None with several devices or nodes (the ranks must run the"
                            " same number of trials)")
    for key, allowed in (("check_val_every_n_epoch", (1,)), ("max_steps", (-1, None))):
        if trainer_kwargs.get(key, allowed[0]) not in allowed:
            raise ArgumentError(f"trainer_kwargs['{key}']", trainer_kwargs[key], "left out: trials validate every"
                                " epoch and all train the same budget of epochs")
    budget = run.max_epochs if run.max_epochs is not None else int(user_max_epochs or 20)
    if 2 * search.max_half_cycle_epochs > budget:
        rank_zero_warn(f"tune_cycle_length: half-cycles above {budget / 2:g} epochs (half the budget of {budget})"
                       f" all train one cycle of {budget} epochs: every trial trains the budget, in whole cycles.")
    return dataclasses.replace(
        run, model_kwargs=dict(run.model_kwargs or {}), datamodule_kwargs=dict(run.datamodule_kwargs or {}),
        trainer_kwargs=trainer_kwargs, max_epochs=budget, base_lr=base, max_lr=high, search=search,
        study=grouped("study", run.study, StudyConfig), output=grouped("output", run.output, OutputConfig),
    )


def _open_study(optuna: Any, run: TuneRun) -> Any:
    """Rank 0: create or join the study."""
    from lightning_clr.tuning._pruners import CycleEndMedianPruner, CycleHalvingPruner
    from lightning_clr.tuning._sampler import DistinctHalfCycleSampler
    from lightning_clr.tuning._storage import make_storage, storage_errors

    cfg = run.study
    os.makedirs(run.output.output_dir, exist_ok=True)
    sampler = cfg.sampler
    if sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.n_startup_trials)
    elif sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    if run.search.distinct:
        sampler = DistinctHalfCycleSampler(sampler, seed=cfg.seed, budget_epochs=run.max_epochs)
    pruner = cfg.pruner
    if pruner == "cycle_median":
        pruner = CycleEndMedianPruner(cfg.n_startup_trials)
    elif pruner == "cycle_halving":
        pruner = CycleHalvingPruner(min_resource=2 * run.search.min_half_cycle_epochs, n_startup_trials=0)
    elif pruner == "none":
        pruner = optuna.pruners.NopPruner()
    storage = make_storage(cfg.storage, cfg.storage_patience)
    with storage_errors(storage):
        return optuna.create_study(storage=storage, study_name=cfg.study_name, direction=cfg.direction,
                                   sampler=sampler, pruner=pruner, load_if_exists=True)


def _factories(run: TuneRun) -> tuple[Callable[..., pl.Trainer], Callable[[], Any]]:
    trainer_kwargs = dict(run.trainer_kwargs)
    user_callbacks = [c for c in trainer_kwargs.pop("callbacks", None) or [] if not isinstance(c, CyclicLearningRate)]
    _warn_early_stopping(user_callbacks, run.search.max_half_cycle_epochs)
    trainer_kwargs.pop("logger", None)
    out = run.output
    defaults = dict(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=out.verbose,
                    default_root_dir=out.output_dir)

    package = [pl]  # the Lightning package of the last built model: its Trainer must be of the same package

    def make_trainer(callbacks: list[Any], max_epochs: int, version: str = "", logger: bool = out.logger) -> Any:
        log: Any = False
        if logger:
            log = package[0].loggers.CSVLogger(save_dir=out.output_dir, name="trials", version=version)
        callbacks = _fresh(user_callbacks) + callbacks  # fresh EarlyStopping etc. in every trial
        return package[0].Trainer(**{**defaults, **trainer_kwargs}, callbacks=callbacks, max_epochs=max_epochs,
                                  logger=log)

    def build() -> tuple[pl.LightningModule, Optional[pl.LightningDataModule]]:
        m = run.model(**run.model_kwargs)
        package[0] = lightning_package(m)  # a `pytorch_lightning` model needs a `pytorch_lightning.Trainer`
        dm = run.datamodule(**run.datamodule_kwargs) if run.datamodule is not None else None
        return m, dm

    return make_trainer, build


def _probe_monitor(run: TuneRun, build: Callable[[], Any]) -> None:
    """One training and one validation batch of a throwaway model (one process only): a ``monitor`` that the
    model never logs is refused before any trial trains, instead of failing every trial at its first cycle end."""
    kwargs = {k: v for k, v in run.trainer_kwargs.items() if k not in ("callbacks", "logger", "max_epochs")}
    kwargs.update(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=run.output.output_dir)
    try:
        model, dm = build()
        trainer = lightning_package(model).Trainer(**kwargs)
        trainer.fit(model, datamodule=dm)
    except Exception:  # a model that fails is the trials' business: each one records the error
        return
    if run.monitor not in trainer.callback_metrics:
        raise ArgumentError("monitor", run.monitor, "a metric that the model logs; after one training and one"
                            f" validation batch it logs {sorted(trainer.callback_metrics)}")


def _warm_start(study: Any, search: SearchSpace, space: dict[str, Any]) -> None:
    for h in heuristic_half_cycles(search):
        params: dict[str, Any] = {"half_cycle_epochs": h}
        if "mode" in space:
            params["mode"] = search.modes[0]
        if "max_lr_scale" in space:
            params["max_lr_scale"] = min(max(1.0, search.min_max_lr_scale), search.max_max_lr_scale)
        study.enqueue_trial(params, skip_if_exists=True)


def _write_outputs(result: CycleTuningResult, out: OutputConfig) -> None:
    """Print the summary, then write it and the plots best-effort: a failed write (a full disk, a directory
    made read-only meanwhile) warns once naming the path, and the result is still returned."""
    text = result.summary()
    rank_zero_info(text)
    path = os.path.join(out.output_dir, "summary.txt")
    try:
        atomic_write_text(path, text + "\n")
        if not out.plot:
            return
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            rank_zero_warn("tune_cycle_length: plots skipped, matplotlib is not installed (`pip install"
                           " lightning-clr[plot]`); the study and summary.txt are complete.")
            return
        path = out.output_dir
        result.plots = result.save_plots(out.output_dir)
    except OSError as err:
        rank_zero_warn(f"tune_cycle_length: could not write {path!r} ({err.strerror or err}); the result is"
                       " returned and the study holds every trial.")


def _warn_early_stopping(callbacks: list[Any], max_half: int) -> None:
    for cb in callbacks:
        if isinstance(cb, EarlyStopping) and cb.patience < 2 * max_half:
            rank_zero_warn(
                f"tune_cycle_length: EarlyStopping(patience={cb.patience}) judges every validation, but the loss"
                f" rises with the LR in the middle of a cycle; a trial it stops before its first cycle end is"
                f" recorded as FAIL. A patience of at least 2 * max_half_cycle_epochs = {2 * max_half} lets every"
                f" cycle finish."
            )


def _fresh(callbacks: list[Any]) -> list[Any]:
    try:
        return copy.deepcopy(callbacks)
    except Exception as err:  # a callback holding a lock, a file, a process...
        rank_zero_warn(f"tune_cycle_length: the trainer's callbacks cannot be copied ({err}); all trials share them.")
        return list(callbacks)


def _progress(total: int, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="tune_cycle_length trials", unit="trial")
        except ImportError:
            pass
    return None
