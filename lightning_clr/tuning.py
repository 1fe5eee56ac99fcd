"""Optuna tuning of the CLR cycle length: :func:`tune_cycle_length` and its :class:`CycleTuningResult`.

Each trial is a real Lightning fit of the user's own LightningModule (and DataModule) with a
:class:`~lightning_clr.CyclicLearningRate` whose half-cycle (in epochs) Optuna suggests. Optuna is an
optional dependency (``pip install lightning-clr[tune]``), imported only when a function here runs.

Example:
    >>> from lightning_clr import tune_cycle_length  # doctest: +SKIP
    >>> result = tune_cycle_length(MyModel, MyDataModule, n_trials=8, max_epochs=16,
    ...                            base_lr=1e-3, max_lr=1e-2)  # doctest: +SKIP
    >>> result.best_half_cycle_epochs, result.best_step_size_up  # doctest: +SKIP
    (4, 120)
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Literal, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_clr._compat import lightning_package
from lightning_clr._tuning_args import _heuristic_half_cycles, _is_global_zero, _search_space, _spawns, _validate
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.range_test import RangeTestConfig

__all__ = ["CycleTuningResult", "tune_cycle_length"]

ModelSource = Union[type[pl.LightningModule], Callable[..., pl.LightningModule]]
DataSource = Union[type[pl.LightningDataModule], Callable[..., pl.LightningDataModule], None]


@dataclass
class CycleTuningResult:
    """What :func:`tune_cycle_length` found. It holds the Optuna study, so nothing is lost.

    Attributes:
        study: The ``optuna.Study`` (in memory, or loaded from ``storage``).
        best_half_cycle_epochs: Best half-cycle length in epochs (``None`` if no trial completed).
        best_step_size_up: The same in optimizer steps per rank (``half_cycle_epochs * steps_per_epoch``).
        steps_per_epoch: Optimizer steps per epoch per rank measured in the best trial.
        best_mode: CLR mode of the best trial.
        best_max_lr: ``max_lr`` of the best trial (after the tuned multiplier, if any).
        base_lr: The ``base_lr`` shared by every trial.
        best_value: Best value of ``monitor``: the mean over the trials of the best setting (TPE may suggest a
            setting more than once; each setting is judged by the mean of its runs).
        monitor: The metric that was optimized.
        direction: ``"minimize"`` or ``"maximize"``.
        epochs_trained: Training epochs run by this call, all trials together (pruned trials count
            the epochs they ran).
        plots: Paths of the PNG files written (optimization history, cycle length vs metric).

    Example:
        >>> result = tune_cycle_length(MyModel, MyDataModule, n_trials=4)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
        >>> trainer = pl.Trainer(callbacks=[result.callback()], max_epochs=32)  # doctest: +SKIP
    """

    study: Any
    best_half_cycle_epochs: Optional[int]
    best_step_size_up: Optional[int]
    steps_per_epoch: Optional[int]
    best_mode: Optional[str]
    best_max_lr: Optional[float]
    base_lr: Optional[float]
    best_value: Optional[float]
    monitor: str
    direction: str
    epochs_trained: int = 0
    plots: list[str] = field(default_factory=list)

    def trials(self) -> list[dict[str, Any]]:
        """One row per trial: number, state, half-cycle (epochs and steps), mode, max_lr, epochs run, value."""
        rows = []
        for t in self.study.get_trials(deepcopy=False) if self.study is not None else []:
            h = t.params.get("half_cycle_epochs")
            spe = t.user_attrs.get("steps_per_epoch")
            history = t.user_attrs.get("history", {})
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "half_cycle_epochs": h,
                    "step_size_up": h * spe if h is not None and spe else None,
                    "mode": t.user_attrs.get("mode"),
                    "max_lr": t.user_attrs.get("max_lr"),
                    "epochs": max((int(k) for k in history), default=0),
                    "value": t.value if t.value is not None else (list(t.intermediate_values.values()) or [None])[-1],
                    "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
                    "error": t.user_attrs.get("error"),
                }
            )
        return rows

    def summary(self) -> str:
        """A plain-text table of the trials and the best cycle length."""
        lines = [f"{'trial':>5} {'state':>8} {'half-cycle':>10} {'steps':>6} {'mode':>11} {'max_lr':>9}"
                 f" {'epochs':>6} {self.monitor:>12}"]
        for r in self.trials():
            value = "" if r["value"] is None else f"{r['value']:.4g}"
            max_lr = "" if r["max_lr"] is None else f"{r['max_lr']:.3g}"
            lines.append(
                f"{r['number']:>5} {r['state']:>8} {_s(r['half_cycle_epochs']):>10} {_s(r['step_size_up']):>6}"
                f" {_s(r['mode']):>11} {max_lr:>9} {r['epochs']:>6} {value:>12}"
                + (f"  pruned at epoch {r['pruned_at_epoch']}" if r["pruned_at_epoch"] else "")
                + (f"  error: {r['error'][:60]}" if r["error"] else "")
            )
        if self.best_half_cycle_epochs is None:
            lines.append("No trial completed.")
        else:
            lines.append(
                f"Best: half-cycle {self.best_half_cycle_epochs} epochs = {_s(self.best_step_size_up)} optimizer steps"
                f" per rank ({_s(self.steps_per_epoch)} steps/epoch), mode {self.best_mode!r},"
                f" {self.monitor} = {self.best_value:.4g}; {self.epochs_trained} epochs trained here."
            )
        return "\n".join(lines)

    def callback(self, **kwargs: Any) -> CyclicLearningRate:
        """A :class:`CyclicLearningRate` with the best half-cycle, mode and bounds; ``kwargs`` override them."""
        if self.best_half_cycle_epochs is None:
            raise ValueError("tune_cycle_length found no completed trial, so there is no best cycle length")
        args: dict[str, Any] = dict(
            base_lr=self.base_lr, max_lr=self.best_max_lr, half_cycle_epochs=self.best_half_cycle_epochs,
            mode=self.best_mode or "triangular",
        )
        args.update(kwargs)
        return CyclicLearningRate(**args)

    def save_plots(self, output_dir: str) -> list[str]:
        """Save ``optimization_history.png`` and ``cycle_length.png`` under ``output_dir``; return their paths."""
        rows = [r for r in self.trials() if r["value"] is not None and r["state"] in ("COMPLETE", "PRUNED")]
        os.makedirs(output_dir, exist_ok=True)
        paths = [os.path.join(output_dir, "optimization_history.png"), os.path.join(output_dir, "cycle_length.png")]
        fig, ax = _figure()
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            pts = [(r["number"], r["value"]) for r in rows if r["state"] == state]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=state.lower())
        done = sorted((r["number"], r["value"]) for r in rows if r["state"] == "COMPLETE")
        if done:
            pick = min if self.direction == "minimize" else max
            best = [pick(v for _, v in done[: k + 1]) for k in range(len(done))]
            ax.step([n for n, _ in done], best, where="post", color="red", label="best so far")
        ax.set(xlabel="trial", ylabel=self.monitor, title="Optimization history")
        ax.legend()
        fig.tight_layout()
        fig.savefig(paths[0], dpi=100)
        fig, ax = _figure()
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            pts = [(r["half_cycle_epochs"], r["value"]) for r in rows if r["state"] == state]
            if pts:
                label = state.lower() + (" (at pruning)" if state == "PRUNED" else "")
                ax.scatter(*zip(*pts), marker=marker, label=label)
        ax.set(xlabel="half-cycle length (epochs)", ylabel=self.monitor, title="Cycle length against the metric")
        ax.legend()
        fig.tight_layout()
        fig.savefig(paths[1], dpi=100)
        return paths


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
    min_half_cycle_epochs: int = 2,
    max_half_cycle_epochs: int = 10,
    half_cycle_step: int = 1,
    modes: Optional[list[str]] = None,
    min_max_lr_scale: float = 1.0,
    max_max_lr_scale: float = 1.0,
    base_lr: Optional[float] = None,
    max_lr: Optional[float] = None,
    range_test: Optional[RangeTestConfig] = None,
    range_test_per_trial: bool = False,
    monitor: str = "val_loss",
    direction: Literal["minimize", "maximize"] = "minimize",
    storage: Optional[str] = None,
    study_name: Optional[str] = None,
    sampler: Literal["tpe", "random"] = "tpe",
    pruner: Literal["cycle_median", "none"] = "cycle_median",
    n_startup_trials: int = 2,
    distinct: bool = True,
    warm_start: bool = True,
    seed: int = 0,
    heartbeat_interval: float = 10.0,
    grace_period: Optional[float] = None,
    output_dir: str = "clr_tuning",
    logger: bool = True,
    plot: bool = True,
    progress_bar: bool = True,
) -> CycleTuningResult:
    """Tune the CLR half-cycle length (in epochs) with Optuna; every trial is a real Lightning fit.

    Args:
        model: A LightningModule class, or any factory; called as ``model(**model_kwargs)`` once per trial.
        datamodule: A LightningDataModule class or factory, called as ``datamodule(**datamodule_kwargs)``.
        model_kwargs: Keyword arguments for ``model``.
        datamodule_kwargs: Keyword arguments for ``datamodule``.
        trainer_kwargs: Keyword arguments of every trial's ``pl.Trainer`` (``accelerator``, ``devices``,
            ``strategy``, ``limit_train_batches``...). ``callbacks`` are kept; a ``CyclicLearningRate`` among
            them is replaced by the trial's.
        n_trials: Trials run by this call (by this worker, when several workers share a study).
        timeout: Stop starting new trials after this many seconds (single process only).
        max_epochs: Training budget of one trial, rounded per trial to a whole number of cycles
            (at least one): a trial with half-cycle ``h`` trains ``2 * h * max(1, round(max_epochs / (2 * h)))``
            epochs and so always ends at a cycle end. Default: ``trainer_kwargs["max_epochs"]`` or 20.
        min_half_cycle_epochs: Smallest half-cycle in epochs (Smith: 2).
        max_half_cycle_epochs: Largest half-cycle in epochs (Smith: 10).
        half_cycle_step: Step of the half-cycle grid in epochs.
        modes: CLR modes to choose among (``"triangular"``, ``"triangular2"``, ``"exp_range"``). Default: triangular.
        min_max_lr_scale: Smallest multiplier of ``max_lr``. Tuned only if it differs from ``max_max_lr_scale``.
        max_max_lr_scale: Largest multiplier of ``max_lr``. The multiplied ``max_lr`` never drops below
            ``base_lr`` (the search range is clipped so that ``base_lr < max_lr`` by construction).
        base_lr: Lower LR bound for every trial. With ``max_lr``: no range test runs.
        max_lr: Upper LR bound for every trial.
        range_test: Settings of the range test that runs ONCE per study when a bound is missing. Its bounds
            are stored in the study's ``user_attrs`` and reused by every trial and every worker.
        range_test_per_trial: Run the range test in every trial instead (slower; off by default).
        monitor: Logged metric to optimize, read at the last validation of each trial.
        direction: ``"minimize"`` or ``"maximize"`` ``monitor``.
        storage: ``None`` (in memory, one process), a journal file path ending in ``.log``/``.journal``
            (several processes on one machine) or an RDB URL such as
            ``postgresql+psycopg2://user@host/db`` (many machines). ``strategy="ddp_spawn"`` needs one of the
            last two; without it a journal file under ``output_dir`` is used.
        study_name: Name of the study; workers with the same ``storage`` and name join it (``load_if_exists``).
        sampler: ``"tpe"`` (seeded with ``seed``) or ``"random"``.
        pruner: ``"cycle_median"`` (default): prune a trial at one of its cycle ends when its best value so
            far is worse than the median of the other trials' best values at their cycle ends up to the same
            epoch; never mid-cycle. ``"none"``: never prune.
        n_startup_trials: Finished trials needed before the pruner prunes anything (and before TPE stops
            sampling at random).
        distinct: When the sampler suggests a half-cycle that another finished, pruned, running or queued
            trial already has (with the same mode and multiplier), try the nearest untried half-cycle instead,
            until every value of the range has been tried.
        warm_start: Enqueue Smith's heuristic half-cycles (2, 4 and 8 epochs, clipped to the range) first.
        seed: Seed of the sampler; trial ``n`` trains with seed ``seed + n``.
        heartbeat_interval: Seconds between a running trial's heartbeats in a persistent storage.
        grace_period: A RUNNING trial whose last heartbeat is older than this is marked FAIL by the next
            worker (a killed worker). Default: ``4 * heartbeat_interval``.
        output_dir: Where logs (one logger version per trial), the summary and the plots go.
        logger: Give every trial a CSV logger under ``output_dir`` (version ``trial_<n>``).
        plot: Save the optimization history and cycle length vs metric as PNG (needs matplotlib).
        progress_bar: Show a progress bar over the trials.

    Returns:
        A :class:`CycleTuningResult` holding the study and the best cycle length in epochs and steps.

    Example:
        >>> result = tune_cycle_length(MyModel, MyDataModule, datamodule_kwargs={"batch_size": 64},
        ...                            trainer_kwargs={"limit_val_batches": 20}, n_trials=8,
        ...                            storage="tune.journal", study_name="clr")  # doctest: +SKIP
    """
    args = _validate(**dict(locals()))
    optuna = _import_optuna()
    from lightning_clr import _storage
    from lightning_clr._pruning import CycleEndMedianPruner, find_bounds, run_trial

    trainer_kwargs = dict(trainer_kwargs or {})
    user_max_epochs = trainer_kwargs.pop("max_epochs", None)
    budget = max_epochs if max_epochs is not None else int(user_max_epochs or 20)
    if _spawns(trainer_kwargs.get("strategy")) and storage is None:
        args.storage = os.path.join(output_dir, "study.journal")
        rank_zero_info(
            f"tune_cycle_length: strategy={trainer_kwargs.get('strategy')!r} trains in child processes, which cannot"
            f" reach an in-memory study; using the journal file {args.storage!r}."
        )
    study = None
    if _is_global_zero():
        from lightning_clr._sampler import DistinctHalfCycleSampler

        os.makedirs(output_dir, exist_ok=True)
        if sampler == "tpe":
            base_sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
        else:
            base_sampler = optuna.samplers.RandomSampler(seed=seed)
        sampler_obj = DistinctHalfCycleSampler(base_sampler, seed=seed) if distinct else base_sampler
        study = optuna.create_study(
            storage=_storage.make_storage(args.storage),
            study_name=study_name,
            direction=direction,
            sampler=sampler_obj,
            pruner=CycleEndMedianPruner(n_startup_trials) if pruner == "cycle_median" else optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
        args.study_name = study.study_name
    user_callbacks = [c for c in trainer_kwargs.pop("callbacks", None) or [] if not isinstance(c, CyclicLearningRate)]
    _warn_early_stopping(user_callbacks, max_half_cycle_epochs)
    trainer_kwargs.pop("logger", None)
    defaults = dict(
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=output_dir
    )

    package = [pl]  # the Lightning package of the last built model: its Trainer must be of the same package

    def make_trainer(callbacks: list[Any], max_epochs: int, version: str = "", logger: bool = logger) -> pl.Trainer:
        log: Any = False
        if logger:
            log = package[0].loggers.CSVLogger(save_dir=output_dir, name="trials", version=version)
        kwargs = {**defaults, **trainer_kwargs}
        callbacks = _fresh(user_callbacks) + callbacks  # fresh EarlyStopping etc. in every trial
        return package[0].Trainer(**kwargs, callbacks=callbacks, max_epochs=max_epochs, logger=log)

    def build() -> tuple[pl.LightningModule, Optional[pl.LightningDataModule]]:
        m = model(**(model_kwargs or {}))
        package[0] = lightning_package(m)  # a `pytorch_lightning` model needs a `pytorch_lightning.Trainer`
        dm = datamodule(**(datamodule_kwargs or {})) if datamodule is not None else None
        return m, dm

    space = _search_space(optuna, args)
    bounds: tuple = (base_lr, max_lr)
    if range_test_per_trial:
        bounds = (None, None)
    elif base_lr is None or max_lr is None:
        bounds = find_bounds(study, args, make_trainer, build)
    if study is not None and warm_start:
        for h in _heuristic_half_cycles(min_half_cycle_epochs, max_half_cycle_epochs, half_cycle_step):
            params: dict[str, Any] = {"half_cycle_epochs": h}
            if "mode" in space:
                params["mode"] = args.modes[0]
            if "max_lr_scale" in space:
                params["max_lr_scale"] = min(max(1.0, min_max_lr_scale), max_max_lr_scale)
            study.enqueue_trial(params, skip_if_exists=True)

    grace = grace_period if grace_period is not None else 4 * heartbeat_interval
    start, epochs_trained = time.monotonic(), 0
    bar = _progress(n_trials, progress_bar and study is not None)
    for i in range(n_trials):
        if timeout is not None and time.monotonic() - start > timeout:
            rank_zero_info(f"tune_cycle_length: timeout of {timeout:g} s reached after {i} trials.")
            break
        if study is not None and args.storage is not None:
            stale = _storage.fail_stale_trials(study, grace)
            if stale:
                rank_zero_warn(f"tune_cycle_length: marked stale RUNNING trials {stale} as FAIL (no heartbeat).")
        epochs_trained += run_trial(study, space, i, bounds, args, budget, make_trainer, build)
        bar.update(1)
    bar.close()
    result = _result(study, monitor, direction, epochs_trained, bounds)
    if study is not None:
        text = result.summary()
        rank_zero_info(text)
        with open(os.path.join(output_dir, "summary.txt"), "w") as f:
            f.write(text + "\n")
        if plot:
            result.plots = result.save_plots(output_dir)
    return result


def _warn_early_stopping(callbacks: list[Any], max_half: int) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

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


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as err:
        raise ImportError(
            "tune_cycle_length needs optuna, an optional dependency: `pip install lightning-clr[tune]`"
        ) from err
    return optuna


def _figure() -> tuple[Any, Any]:
    """A matplotlib Figure and its Axes, without pyplot: the user's backend and open figures are left alone."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "Saving the tuning plots needs matplotlib: `pip install lightning-clr[plot]` (or pass plot=False)"
        ) from err
    fig = Figure(figsize=(6, 4))
    return fig, fig.subplots()


def _progress(total: int, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="tune_cycle_length trials", unit="trial")
        except ImportError:
            pass
    return SimpleNamespace(update=lambda n: None, close=lambda: None)


def _result(study: Any, monitor: str, direction: str, epochs: int, bounds: tuple) -> CycleTuningResult:
    from optuna.trial import TrialState

    empty = CycleTuningResult(study, None, None, None, None, None, bounds[0], None, monitor, direction, epochs)
    if study is None or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return empty
    # A setting that TPE suggested more than once is judged by the mean of its runs, not by its luckiest
    # one: the seed-to-seed spread of one run is often larger than the differences between cycle lengths.
    runs: dict[tuple, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        runs.setdefault(tuple(sorted(trial.params.items())), []).append(trial)
    pick = min if direction == "minimize" else max
    means = {key: sum(t.value for t in group) / len(group) for key, group in runs.items()}
    best_key = pick(means, key=means.__getitem__)
    best = pick(runs[best_key], key=lambda t: t.value)
    h = int(best.params["half_cycle_epochs"])
    spe = best.user_attrs.get("steps_per_epoch")
    return CycleTuningResult(
        study=study,
        best_half_cycle_epochs=h,
        best_step_size_up=h * spe if spe else None,
        steps_per_epoch=spe,
        best_mode=best.user_attrs.get("mode"),
        best_max_lr=best.user_attrs.get("max_lr"),
        base_lr=best.user_attrs.get("base_lr"),
        best_value=means[best_key],
        monitor=monitor,
        direction=direction,
        epochs_trained=epochs,
    )
