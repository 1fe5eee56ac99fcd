"""The tuner's three groups of settings: validated by name (with their group's prefix), and the heuristic
half-cycles that start a study."""

from __future__ import annotations

import optuna
import pytest

from lightning_clr import ArgumentError
from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig
from lightning_clr.tuning._config import grouped, heuristic_half_cycles, optuna_space


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: SearchSpace(min_half_cycle_epochs=0), "search.min_half_cycle_epochs"),
        (lambda: SearchSpace(modes=("exp_range",)), "search.modes"),
        (lambda: StudyConfig(sampler="grid"), "study.sampler"),
        (lambda: StudyConfig(pruner=3), "study.pruner"),
        (lambda: OutputConfig(output_dir=""), "output.output_dir"),
        (lambda: OutputConfig(plot="yes"), "output.plot"),
    ],
)
def test_a_bad_field_is_named_with_its_group(build, argument: str) -> None:
    with pytest.raises(ArgumentError) as info:
        build()
    assert info.value.argument == argument


def test_grouped_takes_none_an_instance_or_a_dict_and_names_a_bad_one() -> None:
    assert grouped("search", None, SearchSpace) == SearchSpace()
    assert grouped("search", {"max_half_cycle_epochs": 4}, SearchSpace).max_half_cycle_epochs == 4
    with pytest.raises(ArgumentError) as info:
        grouped("search", {"no_such_field": 1}, SearchSpace)
    assert info.value.argument == "search"
    with pytest.raises(ArgumentError):
        grouped("output", 3, OutputConfig)


@pytest.mark.parametrize(
    "low, high, step, expected",
    [(2, 10, 1, [2, 4, 8]), (1, 3, 1, [2, 3]), (2, 11, 3, [2, 5, 8]), (5, 6, 1, [5, 6])],
)
def test_heuristic_half_cycles_are_smiths_2_4_8_moved_onto_the_grid(low, high, step, expected) -> None:
    space = SearchSpace(min_half_cycle_epochs=low, max_half_cycle_epochs=high, half_cycle_step=step)
    values = heuristic_half_cycles(space)
    assert values == expected
    assert all(low <= h <= high and (h - low) % step == 0 for h in values)


def test_the_optuna_space_has_the_half_cycle_last_and_only_what_is_tuned() -> None:
    plain = optuna_space(optuna, SearchSpace())
    assert list(plain) == ["half_cycle_epochs"]
    full = optuna_space(optuna, SearchSpace(modes=("triangular", "triangular2"), max_max_lr_scale=2.0))
    assert list(full) == ["mode", "max_lr_scale", "half_cycle_epochs"]
    assert full["half_cycle_epochs"].low == 2 and full["half_cycle_epochs"].high == 10
