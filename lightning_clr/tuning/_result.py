"""What :func:`lightning_clr.tune_cycle_length` found: :class:`CycleTuningResult`, its table and its plots.

A setting that the sampler suggested more than once is judged by the mean of its runs, not by its luckiest
one; ``best_value`` and the "best so far" line of the history plot are both that mean.

Example:
    >>> result = tune_cycle_length(MyModel, MyDataModule)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from lightning_clr._outputs import atomic_write_figure
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.engine._plan import one_or_list
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO

__all__ = ["CycleTuningResult"]


@dataclass
class CycleTuningResult:
    """What :func:`tune_cycle_length` found. It holds the Optuna study, so nothing is lost.

    Attributes:
        study: The ``optuna.Study`` (in memory, or loaded from ``storage``).
        best_half_cycle_epochs: Best half-cycle length in epochs (``None`` if no trial completed).
        best_step_size_up: The same in optimizer steps per rank (``half_cycle_epochs * steps_per_epoch``).
        steps_per_epoch: Optimizer steps per epoch per rank measured in the best trial.
        best_mode: CLR mode of the best trial.
        best_max_lr: ``max_lr`` of the best trial (after the tuned multiplier, if any): one value, or one per param
            group when the groups differ.
        base_lr: The ``base_lr`` shared by every trial (one value, or one per param group).
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
    best_max_lr: Union[float, list[float], None]
    base_lr: Union[float, list[float], None]
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
            history = t.user_attrs.get("history", {})
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "half_cycle_epochs": h,
                    "step_size_up": _trained_step_size_up(t),
                    "mode": t.user_attrs.get("mode"),
                    "max_lr": _bound(t.user_attrs.get("max_lr")),
                    "epochs": max((int(k) for k in history), default=0),
                    "value": t.value if t.value is not None else (list(t.intermediate_values.values()) or [None])[-1],
                    "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
                    "error": _error(t),
                }
            )
        return rows

    def summary(self) -> str:
        """A plain-text table of the trials and the best cycle length."""
        lines = [f"{'trial':>5} {'state':>8} {'half-cycle':>10} {'steps':>6} {'mode':>11} {'max_lr':>9}"
                 f" {'epochs':>6} {self.monitor:>12}"]
        for r in self.trials():
            value = "" if r["value"] is None else f"{r['value']:.4g}"
            max_lr = _lrs(r["max_lr"])
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
                f"Best: half-cycle {self.best_half_cycle_epochs} epochs, trained as {_s(self.best_step_size_up)}"
                f" optimizer steps per rank ({_s(self.steps_per_epoch)} steps/epoch), mode {self.best_mode!r},"
                f" {self.monitor} = {self.best_value:.4g}; {self.epochs_trained} epochs trained here."
            )
        return "\n".join(lines)

    def callback(self, **kwargs: Any) -> CyclicLearningRate:
        """A :class:`CyclicLearningRate` with the best half-cycle, mode and bounds, and the annealing tail the trials
        ran with (``final_lr_ratio=0.1``); ``kwargs`` override them."""
        if self.best_half_cycle_epochs is None:
            raise ValueError("tune_cycle_length found no completed trial, so there is no best cycle length")
        args: dict[str, Any] = dict(
            base_lr=self.base_lr, max_lr=self.best_max_lr, half_cycle_epochs=self.best_half_cycle_epochs,
            mode=self.best_mode or "triangular", final_lr_ratio=DEFAULT_FINAL_LR_RATIO,  # as the trials ran
        )
        args.update(kwargs)
        return CyclicLearningRate(**args)

    def best_so_far(self) -> list[tuple[int, float]]:
        """``(trial number, best value)`` after each completed trial, judged as ``best_value`` is: the best
        setting by the mean of its completed runs so far. The last value is ``best_value``."""
        from optuna.trial import TrialState

        if self.study is None:
            return []
        pick = min if self.direction == "minimize" else max
        runs: dict[tuple, list[float]] = {}
        out = []
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for t in sorted(done, key=lambda t: t.number):
            runs.setdefault(tuple(sorted(t.params.items())), []).append(float(t.value))
            out.append((t.number, pick(sum(v) / len(v) for v in runs.values())))
        return out

    def history_figure(self) -> Any:
        """The optimization history as a matplotlib ``Figure``: every trial's value, and the best so far as
        ``best_value`` judges it (the mean of a setting's runs)."""
        rows = [r for r in self.trials() if r["value"] is not None and r["state"] in ("COMPLETE", "PRUNED")]
        fig, ax = _figure()
        done = self.best_so_far()
        if done:
            ax.step([n for n, _ in done], [v for _, v in done], where="post", color="red",
                    label="best so far (mean of a setting's runs)")
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            pts = [(r["number"], r["value"]) for r in rows if r["state"] == state]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=state.lower())
        ax.set(xlabel="trial", ylabel=self.monitor, title="Optimization history")
        ax.legend()
        fig.tight_layout()
        return fig

    def save_plots(self, output_dir: str) -> list[str]:
        """Save ``optimization_history.png`` and ``cycle_length.png`` under ``output_dir``; return their paths."""
        rows = [r for r in self.trials() if r["value"] is not None and r["state"] in ("COMPLETE", "PRUNED")]
        os.makedirs(output_dir, exist_ok=True)
        paths = [os.path.join(output_dir, "optimization_history.png"), os.path.join(output_dir, "cycle_length.png")]
        atomic_write_figure(paths[0], self.history_figure())  # a symlink there is replaced, never followed
        fig, ax = _figure()
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            pts = [(r["half_cycle_epochs"], r["value"]) for r in rows if r["state"] == state]
            if pts:
                label = state.lower() + (" (at pruning)" if state == "PRUNED" else "")
                ax.scatter(*zip(*pts), marker=marker, label=label)
        ax.set(xlabel="half-cycle length (epochs)", ylabel=self.monitor, title="Cycle length against the metric")
        ax.legend()
        fig.tight_layout()
        atomic_write_figure(paths[1], fig)
        return paths


def _error(trial: Any) -> Optional[str]:
    """A trial's ``error``; a stale-trial sweep's that lost the race against the trial's own end is no error."""
    error = trial.user_attrs.get("error")
    if isinstance(error, str) and error.startswith("stale:") and trial.state.name != "FAIL":
        return None
    return error


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _lrs(value: Any) -> str:
    if value is None:
        return ""
    return "/".join(f"{v:.3g}" for v in value) if isinstance(value, list) else f"{value:.3g}"


def _bound(value: Any) -> Union[float, list[float], None]:
    """A stored bound (a list per param group, or one float in a study of an earlier version)."""
    return one_or_list(tuple(value)) if isinstance(value, list) else value


def _trained_step_size_up(trial: Any) -> Optional[int]:
    """The rising half-cycle in optimizer steps that ``trial`` trained with (recorded at its first cycle end;
    in a study of an earlier version, its half-cycle times its steps per epoch)."""
    up = trial.user_attrs.get("step_size_up")
    if up is not None:
        return int(up)
    h, spe = trial.params.get("half_cycle_epochs"), trial.user_attrs.get("steps_per_epoch")
    return int(h) * int(spe) if h is not None and spe else None


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


def result_of(study: Any, monitor: str, direction: str, epochs: int, bounds: tuple) -> CycleTuningResult:
    from optuna.trial import TrialState

    base = bounds[0]
    empty = CycleTuningResult(study, None, None, None, None, None, one_or_list(tuple(base)) if isinstance(
        base, (list, tuple)) else base, None, monitor, direction, epochs)
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
    return CycleTuningResult(
        study=study,
        best_half_cycle_epochs=int(best.params["half_cycle_epochs"]),
        best_step_size_up=_trained_step_size_up(best),
        steps_per_epoch=best.user_attrs.get("steps_per_epoch"),
        best_mode=best.user_attrs.get("mode"),
        best_max_lr=_bound(best.user_attrs.get("max_lr")),
        base_lr=_bound(best.user_attrs.get("base_lr")),
        best_value=means[best_key],
        monitor=monitor,
        direction=direction,
        epochs_trained=epochs,
    )
