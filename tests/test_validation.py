"""The shared argument checks: numbers from numpy and 0-d tensors in, bools and strings out, names kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_clr._validation import MAX_STEPS, ArgumentError, boolean, choice, float_in, int_in, positive_float


@pytest.mark.parametrize("value", [0.01, 1, np.float32(0.5), np.float64(2.0), np.int64(3), torch.tensor(0.25),
                                   torch.tensor(4)])
def test_numbers_of_every_kind_are_plain_floats(value):
    out = positive_float("x", value)
    assert type(out) is float and out == pytest.approx(float(value))


@pytest.mark.parametrize("value", [True, None, "0.1", [0.1], torch.tensor([1.0, 2.0]), math.nan, math.inf, 0, -1])
def test_bad_numbers_name_the_argument_and_value(value):
    with pytest.raises(ArgumentError) as info:
        positive_float("max_lr", value)
    err = info.value
    assert err.argument == "max_lr" and err.value is value
    assert str(err).startswith("`max_lr` must be a finite number > 0, got ")
    assert isinstance(err, ValueError) and isinstance(err, TypeError)


def test_whole_numbers_and_their_range():
    assert int_in("n", np.int64(4), 1) == 4 and type(int_in("n", torch.tensor(3), 1)) is int
    for bad in (2.5, 2.0, True, "3", 0, MAX_STEPS + 1, 10**400):
        with pytest.raises(ArgumentError, match=r"`n` must be a whole number"):
            int_in("n", bad, 1, MAX_STEPS)


def test_intervals_booleans_and_choices():
    assert float_in("gamma", 1.0, 0.0, 1.0, low_open=True) == 1.0
    with pytest.raises(ArgumentError, match=r"`gamma` must be a number in \(0, 1\], got 0"):
        float_in("gamma", 0, 0.0, 1.0, low_open=True)
    with pytest.raises(ArgumentError, match=r"in \[0, 1\), got 1"):
        float_in("m", 1, 0.0, 1.0, high_open=True)
    assert boolean("b", np.bool_(True)) is True
    for bad in ("no", 0, 1, None):
        with pytest.raises(ArgumentError, match="`b` must be True or False"):
            boolean("b", bad)
    with pytest.raises(ArgumentError, match=r"`mode` must be one of 'a', 'b', got 'c'"):
        choice("mode", "c", ("a", "b"))
