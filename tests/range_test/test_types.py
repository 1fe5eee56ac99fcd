"""RangeTestConfig's validation and RangeTestResult's JSON form, versions and per-group bounds."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torchmetrics import MeanMetric

from lightning_clr import RangeTestConfig, RangeTestResult
from lightning_clr._validation import ArgumentError


# ---------------------------------------------------------------- RangeTestConfig
@pytest.mark.parametrize(
    "kwargs, argument, match",
    [
        (dict(min_lr=1.0, max_lr=0.1), "min_lr", r"`range_test.min_lr` must be < `range_test.max_lr` \(0.1\), got 1.0"),
        (dict(min_lr=0.0), "min_lr", r"`range_test.min_lr` must be a finite number > 0, got 0.0"),
        (dict(max_lr=float("nan")), "max_lr", r"`range_test.max_lr` must be a finite number > 0, got nan"),
        (dict(max_lr="1.0"), "max_lr", r"`range_test.max_lr` must be a finite number > 0, got '1.0'"),
        (dict(num_steps=5), "num_steps", r"`range_test.num_steps` must be a whole number in \[10, 100000\], got 5"),
        (dict(num_steps=10**9), "num_steps", r"in \[10, 100000\], got 1000000000"),
        (dict(num_steps=50.0), "num_steps", r"a whole number .*got 50.0"),
        (dict(num_steps=True), "num_steps", r"a whole number .*got True"),
        (dict(rule="best"), "rule", r"`range_test.rule` must be one of .*got 'best'"),
        (dict(mode="cosine"), "mode", r"`range_test.mode` must be one of 'exponential', 'linear', got 'cosine'"),
        (dict(smoothing=0.0), "smoothing", r"`range_test.smoothing` must be a number in \[0.0001, 1\], got 0.0"),
        (dict(smoothing=True), "smoothing", r"`range_test.smoothing` must be a number in \[0.0001, 1\], got True"),
        (dict(smoothing=None), "smoothing", r"got None"),
        (dict(divergence_threshold=1.0), "divergence_threshold", r"in \(1, inf\), got 1.0"),
        (dict(divergence_threshold=math.inf), "divergence_threshold", r"in \(1, inf\), got inf"),
        (dict(base_divisor=0.5), "base_divisor", r"`range_test.base_divisor` must be a number in \[1, inf\), got 0.5"),
        (dict(save="no"), "save", r"`range_test.save` must be True or False, got 'no'"),
        (dict(save=1), "save", r"must be True or False, got 1"),
        (dict(progress_bar="no"), "progress_bar", r"`range_test.progress_bar` must be True or False, got 'no'"),
        (dict(metric="accuracy"), "metric", r"`range_test.metric` must be a torchmetrics Metric or None"),
        (dict(metric=MeanMetric()), "metric", r"MeanMetric.higher_is_better is None"),
    ],
)
def test_bad_config_is_refused_naming_the_field(kwargs: dict[str, Any], argument: str, match: str) -> None:
    with pytest.raises(ArgumentError, match=match) as info:
        RangeTestConfig(**kwargs)
    assert info.value.argument == f"range_test.{argument}"
    assert isinstance(info.value, ValueError)


def test_numpy_and_0d_torch_numbers_are_accepted_and_stored_plain() -> None:
    cfg = RangeTestConfig(
        min_lr=np.float32(1e-5), max_lr=torch.tensor(0.5), num_steps=np.int64(40), smoothing=torch.tensor(0.1),
        divergence_threshold=np.float64(5.0), base_divisor=np.int32(3), save=np.bool_(False), progress_bar=False,
    )
    for name in ("min_lr", "max_lr", "smoothing", "divergence_threshold", "base_divisor"):
        assert type(getattr(cfg, name)) is float, name
    assert type(cfg.num_steps) is int and cfg.num_steps == 40
    assert cfg.save is False and cfg.base_divisor == 3.0 and cfg.max_lr == 0.5
    assert cfg.min_lr == float(np.float32(1e-5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_steps = 5  # type: ignore[misc]


def test_config_fields_are_plainly_typed_for_lightning_cli() -> None:
    types = {f.name: str(f.type) for f in dataclasses.fields(RangeTestConfig)}
    assert types["num_steps"] == "int" and types["min_lr"] == "float" and types["save"] == "bool"
    assert RangeTestConfig(num_steps=100_000).num_steps == 100_000


# ---------------------------------------------------------------- RangeTestResult: JSON
def _strict_loads(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_result_round_trips_through_strict_json(tmp_path: Any) -> None:
    r = RangeTestResult(lrs=[1e-4, 1e-3, 1e-2, 1e-1], losses=[1.0, 0.5, 0.3, float("inf")],
                        smoothed_losses=[1.0, 0.7, 0.5, float("nan")], base_lr=2.5e-4, max_lr=1e-3,
                        rule="smith", stopped_early=True, stop_reason="nan", metric_values=[0.1, -math.inf],
                        group_lrs=[1e-3, 1e-2], skipped_batches=3)
    path = str(tmp_path / "r.json")
    r.to_json(path)
    with open(path, encoding="utf-8") as f:
        data = _strict_loads(f.read())  # NaN / Infinity literals would raise here
    assert data["losses"][-1] == "inf" and data["smoothed_losses"][-1] == "nan" and data["version"] == 2
    again = RangeTestResult.from_json(path)
    assert again.to_dict() == r.to_dict() and again.losses[-1] == float("inf") and math.isnan(again.smoothed_losses[-1])
    assert again.group_lrs == [1e-3, 1e-2] and again.skipped_batches == 3


def test_strict_json_check_can_fail() -> None:
    with pytest.raises(ValueError, match="not strict JSON: NaN"):
        _strict_loads(json.dumps({"x": float("nan")}))


def test_a_non_finite_value_outside_the_curves_is_refused_not_written() -> None:
    r = RangeTestResult(lrs=[1e-3], losses=[1.0], smoothed_losses=[1.0], base_lr=1e-3, max_lr=math.inf, rule="smith")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        r.to_json()


def test_version_1_reads_as_one_group_and_unknown_versions_are_refused() -> None:
    v1 = {"version": 1, "lrs": [1e-3, 1e-2], "losses": [1.0, 0.5], "smoothed_losses": [1.0, 0.7],
          "base_lr": 1e-3, "max_lr": 4e-3, "rule": "smith", "stopped_early": False}
    old = RangeTestResult.from_dict(v1)
    assert old.group_lrs == [] and old.skipped_batches == 0
    assert old.group_bounds() == ([1e-3], [4e-3])
    for bad in (3, 0, "2", True, None):
        with pytest.raises(ValueError, match=r"unknown `version`"):
            RangeTestResult.from_dict({**v1, "version": bad})
    for key in ("version", "lrs", "max_lr"):
        with pytest.raises(ValueError, match=f"key '{key}' is missing"):
            RangeTestResult.from_dict({k: v for k, v in v1.items() if k != key})


# ---------------------------------------------------------------- RangeTestResult: per-group bounds
def test_group_bounds_keep_the_configured_ratios() -> None:
    r = RangeTestResult(lrs=[], losses=[], smoothed_losses=[], base_lr=0.02, max_lr=0.08, rule="smith",
                        group_lrs=[1e-4, 1e-3, 1e-2, 1e-2])
    base, high = r.group_bounds()
    assert r.reference_group == 2
    assert base[2] == 0.02 and high[2] == 0.08  # the reference group's are exactly the result's
    for g, lr in enumerate(r.group_lrs):
        assert base[g] / base[2] == pytest.approx(lr / 1e-2, rel=1e-12)
        assert high[g] / high[2] == pytest.approx(lr / 1e-2, rel=1e-12)
        assert high[g] / base[g] == pytest.approx(4.0, rel=1e-12)
    one = dataclasses.replace(r, group_lrs=[0.5])
    assert one.group_bounds() == ([0.02], [0.08])
