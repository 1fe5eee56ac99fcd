"""CycleSettings: every argument validated once, by name, and normalized (bounds as tuples, numbers as floats)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lightning_clr import ArgumentError, RangeTestConfig
from lightning_clr.engine._settings import DEFAULT_HALF_CYCLE_EPOCHS, CycleSettings


def test_bounds_become_tuples_of_floats_from_python_numpy_and_torch_numbers() -> None:
    settings = CycleSettings(base_lr=np.float32(0.5), max_lr=[torch.tensor(1.0), 2])
    assert settings.base_lr == (0.5,) and settings.max_lr == (1.0, 2.0)
    assert all(type(v) is float for v in (*settings.base_lr, *settings.max_lr))
    assert CycleSettings(step_size_up=np.int64(7)).step_size_up == 7
    assert type(CycleSettings(half_cycle_epochs=3).half_cycle_epochs) is float


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"base_lr": []}, "base_lr"),
        ({"base_lr": -1.0}, "base_lr"),
        ({"max_lr": [0.1, float("nan")]}, "max_lr[1]"),
        ({"base_lr": 0.2, "max_lr": 0.1}, "max_lr"),
        ({"base_lr": [0.1, 0.1, 0.1], "max_lr": [1.0, 1.0]}, "max_lr"),
        ({"half_cycle_epochs": None}, "half_cycle_epochs"),
        ({"cycle_momentum": "no"}, "cycle_momentum"),
        ({"scale_fn": 3}, "scale_fn"),
        ({"range_test": {"num_steps": 10}}, "range_test"),
        ({"mode": "cosine"}, "mode"),
    ],
)
def test_a_bad_argument_names_itself(kwargs: dict, argument: str) -> None:
    with pytest.raises(ArgumentError) as info:
        CycleSettings(**kwargs)
    assert info.value.argument == argument


def test_one_bound_broadcasts_against_per_group_bounds_and_each_group_is_checked() -> None:
    assert CycleSettings(base_lr=0.1, max_lr=[0.2, 0.3]).max_lr == (0.2, 0.3)
    with pytest.raises(ArgumentError, match="every param group"):
        CycleSettings(base_lr=[0.1, 0.5], max_lr=0.3)


def test_needs_range_test_unless_both_bounds_are_given() -> None:
    assert CycleSettings().needs_range_test and CycleSettings(base_lr=0.1).needs_range_test
    assert not CycleSettings(base_lr=0.1, max_lr=1.0).needs_range_test


def test_changed_from_default_lists_only_what_differs_and_a_default_given_counts_as_unchanged() -> None:
    assert CycleSettings().changed_from_default() == ()
    given = CycleSettings(half_cycle_epochs=DEFAULT_HALF_CYCLE_EPOCHS, mode="triangular2", max_lr=1.0)
    assert given.changed_from_default() == ("max_lr", "mode")
    assert CycleSettings(scale_fn=lambda x: 1.0).changed_from_default() == ("scale_fn",)
    assert CycleSettings(range_test=RangeTestConfig(num_steps=50)).changed_from_default() == ("range_test",)


def test_replace_validates_again_and_the_settings_are_frozen() -> None:
    settings = CycleSettings(base_lr=0.1)
    assert settings.replace(max_lr=1.0).max_lr == (1.0,)
    with pytest.raises(ArgumentError):
        settings.replace(max_lr=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.mode = "triangular2"  # type: ignore[misc]


def test_a_scale_fn_path_is_imported_and_a_lambda_has_no_path() -> None:
    settings = CycleSettings(scale_fn="helpers:sqrt_scale", mode="triangular")
    assert settings.scale_fn(4.0) == 2.0 and settings.scale_fn_path == "helpers:sqrt_scale"
    assert CycleSettings(scale_fn=lambda x: 1.0).scale_fn_path is None
