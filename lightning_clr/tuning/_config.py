"""The settings of :func:`lightning_clr.tune_cycle_length`, grouped into three validated frozen objects
(:class:`SearchSpace`, :class:`StudyConfig`, :class:`OutputConfig`), and the helpers that read them: the
Optuna search space and Smith's warm-start values (which process is rank 0: ``_env``).

Each object checks its own fields when built, so a bad value fails before any training step with an
:class:`~lightning_clr._validation.ArgumentError` naming the field. Torch-free, and optuna-free until a
sampler or pruner object is checked.

Example:
    >>> SearchSpace(min_half_cycle_epochs=2, max_half_cycle_epochs=8).max_half_cycle_epochs
    8
    >>> StudyConfig(storage="tune.journal", study_name="clr").grace
    40.0
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional, Union

from lightning_clr._validation import ArgumentError, boolean, choice, float_in, int_in
from lightning_clr.schedule import MODES
from lightning_clr.tuning._optuna import import_optuna

__all__ = ["OutputConfig", "SearchSpace", "StudyConfig"]

SAMPLERS = ("tpe", "random")
PRUNERS = ("cycle_halving", "cycle_median", "none")
# Sane ranges: beyond them a value is a typo that fails far from where it was written (a heartbeat thread that
# dies on a 1e30 s wait or busy-loops the storage on 5e-324 s, a grid of 10**30 epochs, a max_lr scaled to inf).
MAX_HALF_CYCLE_EPOCHS = 100_000
MAX_LR_SCALE_RANGE = (1e-3, 1e3)
HEARTBEAT_RANGE = (0.05, 3600.0)
MAX_GRACE_PERIOD = 30 * 24 * 3600.0


@dataclass(frozen=True)
class SearchSpace:
    """What the tuner searches: the half-cycle grid in epochs, the CLR modes and the ``max_lr`` multiplier.

    Args:
        min_half_cycle_epochs: Smallest half-cycle in epochs (Smith: 2).
        max_half_cycle_epochs: Largest half-cycle in epochs (Smith: 10), at most 100000.
        half_cycle_step: Step of the half-cycle grid in epochs; divides the range.
        modes: CLR modes to choose among, ``"triangular"`` and/or ``"triangular2"``.
        min_max_lr_scale: Smallest multiplier of ``max_lr`` (in [1e-3, 1e3]); tuned only if it differs from
            ``max_max_lr_scale``.
        max_max_lr_scale: Largest multiplier of ``max_lr`` (the multiplied ``max_lr`` stays above ``base_lr``).
        warm_start: Enqueue Smith's heuristic half-cycles (2, 4 and 8 epochs, moved onto the grid) first.
        distinct: Replace a suggested half-cycle that another trial already has by the nearest untried one.

    Example:
        >>> SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=12, modes=["triangular", "triangular2"])
        ... # doctest: +ELLIPSIS
        SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=12, ...)
    """

    min_half_cycle_epochs: int = 2
    max_half_cycle_epochs: int = 10
    half_cycle_step: int = 1
    modes: tuple[str, ...] = ("triangular",)
    min_max_lr_scale: float = 1.0
    max_max_lr_scale: float = 1.0
    warm_start: bool = True
    distinct: bool = True

    def __post_init__(self) -> None:
        with _group("search"):
            self._check()

    def _check(self) -> None:
        top = MAX_HALF_CYCLE_EPOCHS
        low = int_in("min_half_cycle_epochs", self.min_half_cycle_epochs, 1, top)
        int_in("max_half_cycle_epochs", self.max_half_cycle_epochs, low, top, what="at least min_half_cycle_epochs")
        step = int_in("half_cycle_step", self.half_cycle_step, 1, top)
        if (self.max_half_cycle_epochs - low) % step:
            raise ArgumentError(
                "half_cycle_step", step,
                f"a divisor of max_half_cycle_epochs - min_half_cycle_epochs ({self.max_half_cycle_epochs} - {low})",
            )
        modes = self.modes
        if isinstance(modes, str) or not isinstance(modes, (list, tuple)) or not modes:
            raise ArgumentError("modes", modes, f"a non-empty list of {MODES}")
        for mode in modes:
            choice("modes", mode, MODES)
            if mode == "exp_range":
                raise ArgumentError("modes", modes, "'triangular' and/or 'triangular2' (exp_range needs a gamma"
                                    " fitted to the run length)")
        object.__setattr__(self, "modes", tuple(modes))
        low_scale = float_in("min_max_lr_scale", self.min_max_lr_scale, *MAX_LR_SCALE_RANGE)
        if float_in("max_max_lr_scale", self.max_max_lr_scale, *MAX_LR_SCALE_RANGE) < low_scale:
            raise ArgumentError("max_max_lr_scale", self.max_max_lr_scale,
                                f"a number >= min_max_lr_scale ({low_scale})")
        boolean("warm_start", self.warm_start)
        boolean("distinct", self.distinct)

    @property
    def tunes_scale(self) -> bool:
        return self.min_max_lr_scale != self.max_max_lr_scale


@dataclass(frozen=True)
class StudyConfig:
    """Where the trials are kept and how they are chosen and pruned.

    Args:
        storage: ``None`` (in memory, one process), a journal file path (several processes on one machine) or
            a database URL (``postgresql://user@host/db``, ``mysql://user@host/db``, ``sqlite:///file.db``).
        study_name: Workers with the same ``storage`` and name join one study.
        direction: ``"minimize"`` or ``"maximize"`` the monitored metric.
        sampler: ``"tpe"`` (seeded with ``seed``), ``"random"``, or any ``optuna.samplers.BaseSampler``.
        pruner: ``"cycle_halving"`` (successive halving whose rungs are cycle ends), ``"cycle_median"``,
            ``"none"``, or any ``optuna.pruners.BasePruner`` (it sees one report per cycle end, step = epoch).
        n_startup_trials: Finished trials before the pruner prunes anything (and before TPE stops sampling at
            random).
        seed: Seed of the sampler; trial ``n`` trains with seed ``seed + n``.
        heartbeat_interval: Seconds between a running trial's heartbeats in a persistent storage, in
            [0.05, 3600]. Stored with each trial, together with the grace period.
        grace_period: A RUNNING trial whose last heartbeat is older than this is marked FAIL by the next worker
            (after a second look, in case the storage stalled). Each trial is judged by the grace period of the
            worker that runs it. Default: ``4 * heartbeat_interval``; at most 30 days.
        storage_patience: Seconds a worker waits out a database server that refuses or cuts its connections (a
            restart, a failover) before it stops with ``StorageError``; ``0``: it stops at once. Retried writes
            are never applied twice. A server that never answered (a wrong URL) is not waited for.

    Example:
        >>> StudyConfig(storage="postgresql://postgres@127.0.0.1/test", study_name="clr", pruner="cycle_median")
        ... # doctest: +ELLIPSIS
        StudyConfig(storage='postgresql://...', ...)
    """

    storage: Optional[str] = None
    study_name: Optional[str] = None
    direction: Literal["minimize", "maximize"] = "minimize"
    sampler: Union[Literal["tpe", "random"], Any] = "tpe"
    pruner: Union[Literal["cycle_halving", "cycle_median", "none"], Any] = "cycle_median"
    n_startup_trials: int = 2
    seed: int = 0
    heartbeat_interval: float = 10.0
    grace_period: Optional[float] = None
    storage_patience: float = 120.0

    def __post_init__(self) -> None:
        with _group("study"):
            self._check()

    def _check(self) -> None:
        for name in ("storage", "study_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ArgumentError(name, value, "None or a non-empty string")
        choice("direction", self.direction, ("minimize", "maximize"))
        _optuna_or_name("sampler", self.sampler, SAMPLERS, "BaseSampler")
        _optuna_or_name("pruner", self.pruner, PRUNERS, "BasePruner")
        int_in("n_startup_trials", self.n_startup_trials, 0)
        int_in("seed", self.seed, -(2**63), 2**63 - 1)
        beat = float_in("heartbeat_interval", self.heartbeat_interval, *HEARTBEAT_RANGE)
        if self.grace_period is not None:
            grace = float_in("grace_period", self.grace_period, 0.0, MAX_GRACE_PERIOD, low_open=True)
            if grace <= beat:
                raise ArgumentError("grace_period", grace, f"None or a number > heartbeat_interval ({beat})")
        float_in("storage_patience", self.storage_patience, 0.0, MAX_GRACE_PERIOD)

    @property
    def grace(self) -> float:
        return float(self.grace_period) if self.grace_period is not None else 4.0 * float(self.heartbeat_interval)


@dataclass(frozen=True)
class OutputConfig:
    """What the tuner writes.

    Args:
        output_dir: Where logs (one logger version per trial), ``summary.txt`` and the plots go.
        logger: Give every trial a CSV logger under ``output_dir`` (version ``trial_<n>``).
        plot: Save the optimization history and cycle length vs metric as PNG; skipped with one warning
            when matplotlib is missing (``pip install lightning-clr[plot]``).
        progress_bar: Show a progress bar over the trials.
        verbose: Show Lightning's banner ("GPU available", tips) and a model summary in every trial's fit;
            off by default, as every trial builds its own Trainer.

    Example:
        >>> OutputConfig(output_dir="runs/tune", plot=False).plot
        False
    """

    output_dir: str = "clr_tuning"
    logger: bool = True
    plot: bool = True
    progress_bar: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        with _group("output"):
            self._check()

    def _check(self) -> None:
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir):
            raise ArgumentError("output_dir", self.output_dir, "a directory path")
        object.__setattr__(self, "output_dir", str(self.output_dir))
        for name in ("logger", "plot", "progress_bar", "verbose"):
            boolean(name, getattr(self, name))


@contextlib.contextmanager
def _group(prefix: str) -> Iterator[None]:
    """Name a field by its group, as the command line does: ``search.max_half_cycle_epochs``."""
    try:
        yield
    except ArgumentError as err:
        raise ArgumentError(f"{prefix}.{err.argument}", err.value, err.requirement) from None


def _optuna_or_name(name: str, value: Any, names: tuple[str, ...], base: str) -> None:
    if isinstance(value, str):
        choice(name, value, names)
        return
    optuna = import_optuna()

    cls = optuna.samplers.BaseSampler if base == "BaseSampler" else optuna.pruners.BasePruner
    if not isinstance(value, cls):
        raise ArgumentError(name, value, f"one of {names} or an optuna.{'samplers' if 'Sampler' in base else 'pruners'}"
                            f".{base}")


def grouped(name: str, value: Any, cls: type) -> Any:
    """``value`` as a ``cls``: ``None`` gives the defaults, a dict its fields."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except TypeError as err:
            if isinstance(err, ArgumentError):
                raise
            raise ArgumentError(name, value, f"a {cls.__name__} or a dict of its fields", str(err)) from None
    raise ArgumentError(name, value, f"None, a {cls.__name__} or a dict of its fields")


def heuristic_half_cycles(space: SearchSpace) -> list[int]:
    """Smith's 2, 4 and 8 epochs, moved onto the grid of ``space``, without duplicates."""
    low, high, step = space.min_half_cycle_epochs, space.max_half_cycle_epochs, space.half_cycle_step
    values: list[int] = []
    for h in (2, 4, 8):
        h = min(max(h, low), high)
        h = low + round((h - low) / step) * step
        h = min(h, high - (high - low) % step)
        if h not in values:
            values.append(h)
    return values


def optuna_space(optuna: Any, space: SearchSpace) -> dict[str, Any]:
    out: dict[str, Any] = {}  # the half-cycle last: a repeat is judged with the other values known
    if len(space.modes) > 1:
        out["mode"] = optuna.distributions.CategoricalDistribution(list(space.modes))
    if space.tunes_scale:
        out["max_lr_scale"] = optuna.distributions.FloatDistribution(
            space.min_max_lr_scale, space.max_max_lr_scale, log=True
        )
    out["half_cycle_epochs"] = optuna.distributions.IntDistribution(
        space.min_half_cycle_epochs, space.max_half_cycle_epochs, step=space.half_cycle_step
    )
    return out


@dataclass(frozen=True)
class TuneRun:
    """The arguments of :func:`~lightning_clr.tune_cycle_length`, as it was called (internal).

    Its fields are the function's parameters, by name and in order (``TuneRun(**locals())`` builds it; a test
    holds the two equal): the types and defaults are written once, in the function's signature. The tuner
    checks it and normalizes it (``max_epochs`` becomes the budget of every trial, the bounds tuples).
    """

    model: Any
    datamodule: Any
    model_kwargs: Optional[dict[str, Any]]
    datamodule_kwargs: Optional[dict[str, Any]]
    trainer_kwargs: Optional[dict[str, Any]]
    n_trials: int
    timeout: Optional[float]
    max_epochs: Optional[int]
    monitor: str
    base_lr: Any
    max_lr: Any
    range_test: Any
    range_test_per_trial: bool
    search: Any
    study: Any
    output: Any
