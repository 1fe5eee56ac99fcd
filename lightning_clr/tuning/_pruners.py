"""Optuna pruners that judge a trial only at its cycle ends, where the tuner reports (step = epochs trained).

- :class:`CycleEndMedianPruner`: worse than the median of the finished trials' best values up to the same epoch.
- :class:`CycleHalvingPruner`: asynchronous successive halving (ASHA) whose rungs are cycle ends.

Only imported once optuna is known to be installed.
"""

from __future__ import annotations

import math
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_clr._validation import int_in

__all__ = ["CycleEndMedianPruner", "CycleHalvingPruner"]


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


class CycleHalvingPruner(optuna.pruners.BasePruner):
    """Successive halving (ASHA) with rungs at cycle ends: rung ``k`` is the first cycle end at or after epoch
    ``min_resource * reduction_factor**k``. A trial reaching a rung goes on only if its value there is among
    the best ``1 / reduction_factor`` of the values every trial had at that rung (the best one when fewer than
    ``reduction_factor`` trials reached it); otherwise it is pruned at that cycle end.

    Unlike Optuna's ``SuccessiveHalvingPruner``, which expects a report at every step, the rungs here are met
    by whatever cycle end comes first past the rung epoch, so trials with different cycle lengths meet at the
    same rungs, and a trial is never compared mid-cycle.

    Args:
        min_resource: Epoch of rung 0. ``None``: the earliest first report of any trial in the study
            (``2 * min_half_cycle_epochs`` under the tuner).
        reduction_factor: ``eta``: the share of trials promoted at each rung is ``1 / eta``.
        n_startup_trials: Finished (complete or pruned) trials needed before anything is pruned.

    Example:
        >>> study = optuna.create_study(pruner=CycleHalvingPruner(min_resource=4, reduction_factor=3))  # doctest: +SKIP
    """

    def __init__(
        self, min_resource: Optional[int] = None, reduction_factor: int = 3, n_startup_trials: int = 0
    ) -> None:
        self.min_resource = None if min_resource is None else int_in("min_resource", min_resource, 1)
        self.reduction_factor = int_in("reduction_factor", reduction_factor, 2)
        self.n_startup_trials = int_in("n_startup_trials", n_startup_trials, 0)

    def _rungs(self, study: optuna.Study, up_to: int) -> list[int]:
        first = self.min_resource
        if first is None:
            firsts = [min(t.intermediate_values) for t in study.get_trials(deepcopy=False) if t.intermediate_values]
            first = min(firsts, default=up_to)
        rungs, r = [], max(1, int(first))
        while r <= up_to:
            rungs.append(r)
            r *= self.reduction_factor
        return rungs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(finished) < self.n_startup_trials:
            return False
        earlier = [s for s in trial.intermediate_values if s < step]
        previous = max(earlier, default=0)
        new = [r for r in self._rungs(study, step) if r > previous]  # rungs first met at this cycle end
        if not new:
            return False
        rung = new[-1]
        others = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if t.number == trial.number:
                continue
            at = _value_at_rung(t, rung)
            if at is not None:
                others.append(at)
        if not others:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranked = sorted(others + [value], reverse=maximize)
        keep = max(1, len(ranked) // self.reduction_factor)
        threshold = ranked[keep - 1]
        return value < threshold if maximize else value > threshold


def _value_at_rung(trial: FrozenTrial, rung: int) -> Optional[float]:
    """The trial's value at its first cycle end at or after epoch ``rung``."""
    steps = [s for s in trial.intermediate_values if s >= rung and not math.isnan(trial.intermediate_values[s])]
    return trial.intermediate_values[min(steps)] if steps else None
