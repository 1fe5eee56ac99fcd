"""A sampler wrapper that does not spend a trial on a half-cycle length that was already tried.

TPE on one small integer range re-suggests its current best value often, and leaves neighbours untried
(docs/evidence.md). A repeat only re-measures seed noise, which the tuner's mean-of-duplicates already handles badly
with two runs; an untried neighbour measures the landscape. So when the wrapped sampler suggests a
``half_cycle_epochs`` that a finished, pruned, running or queued trial already has (with the same other
parameters), the nearest untried value on the grid is used instead. Once every value has been tried, the
suggestion is kept. Failed trials do not count as tried: a killed worker's trial should run again.

Under :func:`~lightning_clr.tune_cycle_length` every trial trains the same budget, its cycle fitted to it in
whole cycles, so half-cycles with the same number of whole cycles in the budget train the same schedule (with 48
epochs, ``h = 10, 11, 12`` all train two cycles of 24): given ``budget_epochs``, such values count as one.

Only imported once optuna is known to be installed.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from lightning_clr.schedule import whole_cycle_count

PARAM = "half_cycle_epochs"
_TRIED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class DistinctHalfCycleSampler(optuna.samplers.BaseSampler):
    """Delegate to ``base``; replace a repeated ``half_cycle_epochs`` with the nearest untried grid value.

    Ties (two untried values equally near) are broken with a generator seeded by ``seed``. With
    ``budget_epochs``, half-cycles that fit the same number of whole cycles into it count as one value.

    Example:
        >>> sampler = DistinctHalfCycleSampler(optuna.samplers.TPESampler(seed=0), seed=0)  # doctest: +SKIP
        >>> study = optuna.create_study(sampler=sampler)  # doctest: +SKIP
    """

    def __init__(
        self, base: optuna.samplers.BaseSampler, seed: Optional[int] = None, budget_epochs: Optional[int] = None
    ) -> None:
        self.base = base
        self.budget_epochs = budget_epochs
        self._rng = np.random.default_rng(seed)

    def _schedule(self, h: int) -> int:
        """What a half-cycle trains: itself, or (with a budget) its number of whole cycles in the budget."""
        return int(h) if self.budget_epochs is None else -whole_cycle_count(self.budget_epochs, int(h))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = dict(self.base.sample_relative(study, trial, search_space))
        if PARAM in params and isinstance(search_space.get(PARAM), IntDistribution):
            others = {**trial.params, **{k: v for k, v in params.items() if k != PARAM}}
            params[PARAM] = self._distinct(study, trial, params[PARAM], search_space[PARAM], others)
        return params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if param_name == PARAM and isinstance(param_distribution, IntDistribution):
            value = self._distinct(study, trial, value, param_distribution, dict(trial.params))
        return value

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Optional[Any]
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = np.random.default_rng()

    def _distinct(
        self, study: optuna.Study, trial: FrozenTrial, value: int, dist: IntDistribution, others: dict[str, Any]
    ) -> int:
        """``value``, or the nearest grid value that no other trial with the same ``others`` has."""
        tried = set()
        for t in study.get_trials(deepcopy=False, states=_TRIED):
            if t.number == trial.number:
                continue
            params = t.params or t.system_attrs.get("fixed_params", {})
            if PARAM in params and all(params.get(k) == v for k, v in others.items() if k != PARAM):
                tried.add(self._schedule(params[PARAM]))
        if self._schedule(value) not in tried:
            return int(value)
        untried = [v for v in range(dist.low, dist.high + 1, dist.step) if self._schedule(v) not in tried]
        if not untried:
            return int(value)
        gap = min(abs(v - value) for v in untried)
        nearest = [v for v in untried if abs(v - value) == gap]
        return int(nearest[int(self._rng.integers(len(nearest)))])
