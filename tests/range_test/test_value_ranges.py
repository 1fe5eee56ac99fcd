"""Learning rates and smoothing out of a sane range (issue 21, item 10): refused by name when built, instead of
a sweep through NaN or infinite LRs, an unnamed OverflowError, or torch's unnamed overflow after one step."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_clr import CyclicLearningRate
from lightning_clr._validation import ArgumentError
from lightning_clr.range_test import RangeTestConfig


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"min_lr": 5e-324}, "range_test.min_lr"),
        ({"max_lr": 1e308}, "range_test.max_lr"),
        ({"smoothing": 5e-324}, "range_test.smoothing"),
    ],
)
def test_range_test_config_out_of_range(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ArgumentError) as info:
        RangeTestConfig(**kwargs)
    assert info.value.argument == argument


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"base_lr": 0.01, "max_lr": 1e308}, "max_lr"),
        ({"base_lr": 5e-324, "max_lr": 0.1}, "base_lr"),
        ({"base_lr": [0.01, 0.01], "max_lr": [0.1, 1e300]}, "max_lr[1]"),
    ],
)
def test_cyclic_learning_rate_bounds_out_of_range(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ArgumentError) as info:
        CyclicLearningRate(**kwargs)
    assert info.value.argument == argument


def test_a_huge_value_is_not_echoed_whole() -> None:
    with pytest.raises(ArgumentError) as info:
        RangeTestConfig(rule="x" * 100_000)
    assert len(str(info.value)) < 500
