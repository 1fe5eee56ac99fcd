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

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

import lightning.pytorch as pl

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
        best_value: Best value of ``monitor``.
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
        n_startup_trials: Finished trials needed before the pruner prunes anything.
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
    raise NotImplementedError
