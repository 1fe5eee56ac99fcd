"""The range test's pure math: EMA, sweep LRs, and every rule on synthetic curves with known answers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_clr.range_test._rules import (
    DIVERGENCE_GAP,
    MIN_POINTS,
    RULES,
    BiasCorrectedEMA,
    smooth,
    suggest,
    suggest_all,
    sweep_lrs,
)


def logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# log10(lr) on an even grid from -6 to 1 in steps of 0.05: index 60 is lr=1e-3, index 120 is lr=1.
GRID = [10 ** (-6 + 0.05 * i) for i in range(141)]


def descent_then_rise(lr: float) -> float:
    """Falls (logistic in log-LR, steepest at 1e-3) from ~1 to ~0.1, then rises quadratically above lr=1."""
    u = math.log10(lr)
    return 1.0 - 0.9 * logistic((u + 3) / 0.3) + 5.0 * max(0.0, u) ** 2


CURVE = [descent_then_rise(lr) for lr in GRID]


# ---------------------------------------------------------------- EMA
def test_ema_of_constant_is_flat_from_first_point() -> None:
    # Lightning's finder divides by 1 - beta**(i+1) one step late, which bends a constant curve upward.
    out = smooth([3.7] * 50, smoothing=0.05)
    assert max(abs(v - 3.7) for v in out) < 1e-12


def test_ema_matches_the_definition() -> None:
    values = [5.0, 1.0, 4.0, 2.0]
    beta, avg, expected = 0.9, 0.0, []
    for k, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        expected.append(avg / (1 - beta**k))
    assert smooth(values, smoothing=0.1) == pytest.approx(expected, rel=1e-15)
    assert smooth(values, smoothing=1.0) == values  # no smoothing


def test_ema_rejects_bad_smoothing() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        BiasCorrectedEMA(0.0)


# ---------------------------------------------------------------- sweep
def test_exponential_sweep_is_geometric_with_exact_ends() -> None:
    lrs = sweep_lrs(1e-7, 10.0, 100)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-7, rel=1e-12) and lrs[-1] == pytest.approx(10.0, rel=1e-12)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)


def test_linear_sweep_is_arithmetic() -> None:
    lrs = sweep_lrs(0.1, 1.0, 10, mode="linear")
    diffs = [b - a for a, b in zip(lrs, lrs[1:])]
    assert lrs[0] == 0.1 and lrs[-1] == pytest.approx(1.0)
    assert max(diffs) == pytest.approx(min(diffs), rel=1e-9)
    with pytest.raises(ValueError, match="mode"):
        sweep_lrs(0.1, 1.0, 10, mode="cosine")


# ---------------------------------------------------------------- rules, known answers
def test_smith_reads_where_the_curve_starts_and_stops_falling() -> None:
    s = suggest(GRID, CURVE, "smith", fallback_max_lr=0.01)
    assert not s.fallback
    # 90% of the drop: logistic = 0.9 -> log10 lr = -3 + 0.3 ln 9; 10%: -3 - 0.3 ln 9 (up to the tails).
    assert s.max_lr == pytest.approx(10 ** (-3 + 0.3 * math.log(9)), rel=0.03)
    assert s.points["start_lr"] == pytest.approx(10 ** (-3 - 0.3 * math.log(9)), rel=0.03)
    assert s.base_lr == pytest.approx(s.max_lr / 4)


def test_steepest_finds_the_steepest_descent_in_log_lr() -> None:
    s = suggest(GRID, CURVE, "steepest", fallback_max_lr=0.01)
    assert s.max_lr == pytest.approx(1e-3, rel=1e-9)
    assert s.base_lr == pytest.approx(2.5e-4, rel=1e-9)


def test_valley_takes_halfway_along_the_longest_descent() -> None:
    # The descent runs from index 0 to the minimum at index 120: a third plus a sixth of it is index 60.
    s = suggest(GRID, CURVE, "valley", fallback_max_lr=0.01)
    assert s.max_lr == pytest.approx(GRID[60], rel=1e-9)
    assert s.points["valley_end_lr"] == pytest.approx(1.0, rel=1e-9)


def test_minimum_rule_takes_a_tenth_of_the_minimum() -> None:
    s = suggest(GRID, CURVE, "minimum", fallback_max_lr=0.01)
    assert s.points["min_point_lr"] == pytest.approx(1.0, rel=1e-9)
    assert s.max_lr == pytest.approx(0.1, rel=1e-9)


def test_max_lr_is_kept_clearly_below_a_sharp_minimum() -> None:
    # Falls slowly until lr=1e-2, then diverges right away: the 90%-of-drop point is at the minimum itself.
    lrs = sweep_lrs(1e-5, 1.0, 51)
    curve = [1.0 - 0.5 * (math.log10(lr) + 5) / 3 if lr <= 1e-2 * 1.0001 else 10.0 for lr in lrs]
    for rule in RULES:
        s = suggest(lrs, curve, rule, fallback_max_lr=0.01)
        assert s.max_lr <= 1e-2 / DIVERGENCE_GAP * (1 + 1e-9), rule


def test_a_raw_spike_before_the_lagging_smoothed_minimum_caps_max_lr() -> None:
    # The smoothed curve (CURVE) bottoms out at lr=1, but a raw step at lr=1e-2 already blew up to 3x the
    # best smoothed loss so far: every rule reads the bounds as if the curve ended there.
    raw = list(CURVE)
    i_spike = next(i for i, lr in enumerate(GRID) if lr >= 1e-2 - 1e-12)
    raw[i_spike] = 3.0 * min(CURVE[:i_spike])
    for rule in RULES:
        plain = suggest(GRID, CURVE, rule, fallback_max_lr=0.01)
        capped = suggest(GRID, CURVE, rule, fallback_max_lr=0.01, raw=raw)
        assert capped.points["instability_lr"] == pytest.approx(GRID[i_spike], rel=1e-9)
        assert capped.max_lr <= GRID[i_spike] / DIVERGENCE_GAP * (1 + 1e-9), rule
        assert capped.max_lr <= plain.max_lr, rule
    # Raw noise below 1.3x the best smoothed loss changes nothing.
    noisy = [v * (1.2 if i % 2 else 0.9) for i, v in enumerate(CURVE)]
    for rule in RULES:
        assert suggest(GRID, CURVE, rule, fallback_max_lr=0.01, raw=noisy).max_lr == pytest.approx(
            suggest(GRID, CURVE, rule, fallback_max_lr=0.01).max_lr, rel=1e-12
        ), rule


def test_rules_use_only_the_finite_prefix() -> None:
    curve = CURVE[:100] + [math.nan] + [0.0] * 40  # a bogus 0 after NaN must not become the minimum
    s = suggest(GRID, curve, "minimum", fallback_max_lr=0.01)
    assert s.points["min_point_lr"] == pytest.approx(GRID[99], rel=1e-9)


# ---------------------------------------------------------------- fallbacks: never None, always explained
def test_short_curve_falls_back_with_a_reason() -> None:
    s = suggest(GRID[: MIN_POINTS - 1], CURVE[: MIN_POINTS - 1], "smith", fallback_max_lr=0.02)
    assert s.fallback and s.max_lr == 0.02 and s.base_lr == 0.005
    assert f"only {MIN_POINTS - 1} finite point" in s.reason and "max_lr=0.02" in s.reason


def test_flat_curve_falls_back() -> None:
    s = suggest(GRID, [2.0 + 1e-4 * math.sin(i) for i in range(len(GRID))], "valley", fallback_max_lr=0.1)
    assert s.fallback and "flat" in s.reason and s.max_lr == 0.1


def test_rising_curve_falls_back_and_is_capped_below_divergence() -> None:
    s = suggest(GRID[:20], [1.0 + i for i in range(20)], "steepest", fallback_max_lr=1.0, diverged_at=GRID[19])
    assert s.fallback and "never fell" in s.reason
    assert s.max_lr == pytest.approx(GRID[19] / 10) and "capped" in s.reason


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="rule.*'magic'"):
        suggest(GRID, CURVE, "magic", fallback_max_lr=0.1)


def test_suggest_all_compares_every_rule_on_one_curve() -> None:
    out = suggest_all(GRID, CURVE, fallback_max_lr=0.01)
    assert set(out) == set(RULES)
    for rule, sug in out.items():
        assert sug == suggest(GRID, CURVE, rule, fallback_max_lr=0.01)
    assert out["minimum"].max_lr / out["steepest"].max_lr == pytest.approx(100)  # rules can differ a lot


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=0, max_size=60),
    st.sampled_from(RULES),
)
def test_every_rule_returns_finite_ordered_bounds_below_the_minimum(curve: list[float], rule: str) -> None:
    lrs = sweep_lrs(1e-6, 1.0, max(len(curve), 2))[: len(curve)]
    s = suggest(lrs, curve, rule, fallback_max_lr=0.03)
    assert math.isfinite(s.base_lr) and math.isfinite(s.max_lr)
    assert 0 < s.base_lr < s.max_lr
    if s.fallback:
        assert s.reason and s.max_lr == 0.03
    else:
        assert s.max_lr <= s.points["min_point_lr"] / DIVERGENCE_GAP * (1 + 1e-9)
