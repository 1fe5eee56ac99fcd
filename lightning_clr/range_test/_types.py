"""The range test's two value types: :class:`RangeTestConfig` (the user's validated settings) and
:class:`RangeTestResult` (the curve, the bounds read off it, and its strict-JSON form).

No Lightning here and no sweep: the types know nothing of how the curve was recorded.

Example:
    >>> cfg = RangeTestConfig(num_steps=200, rule="valley")
    >>> (cfg.num_steps, cfg.rule)
    (200, 'valley')
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional

from torchmetrics import Metric

from lightning_clr._outputs import atomic_write_text
from lightning_clr._validation import ArgumentError, boolean, choice, float_in, int_in, learning_rate
from lightning_clr.range_test._plot import plot_range_test
from lightning_clr.range_test._rules import DEFAULT_BASE_DIVISOR, RULES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RESULT_VERSION", "RangeTestConfig", "RangeTestResult"]

MIN_NUM_STEPS = 10
MAX_NUM_STEPS = 100_000  # a sweep is a few hundred steps; 10**9 would only exhaust memory for the curve
RESULT_VERSION = 2  # 2: per-group configured LRs (`group_lrs`) and `skipped_batches`
MODES = ("exponential", "linear")
SMOOTHING_MIN = 1e-4  # the EMA's beta stays below 1 in floats, so its bias correction never divides by zero
_CURVES = ("lrs", "losses", "smoothed_losses", "metric_values", "smoothed_metric")
_REQUIRED = ("version", "lrs", "losses", "smoothed_losses", "base_lr", "max_lr", "rule")


@dataclass(frozen=True)
class RangeTestConfig:
    """Settings of the LR range test, validated on construction.

    Every error is a :class:`lightning_clr._validation.ArgumentError` (a ``ValueError``) naming
    ``range_test.<field>`` and the value. Numbers may be Python, numpy or 0-d torch numbers; they are stored
    as plain ``float`` / ``int``. ``save`` and ``progress_bar`` take only ``True`` or ``False``.

    Args:
        min_lr: First LR of the sweep (of the param group with the largest configured LR; see
            :class:`RangeTestResult`).
        max_lr: Last LR of the sweep (the sweep usually stops earlier, at divergence).
        num_steps: Optimizer steps in the sweep, in [10, 100000].
        mode: ``"exponential"`` (even steps in log-LR, the default) or ``"linear"``.
        rule: How both bounds are read off the curve: ``"smith"``, ``"valley"``, ``"steepest"`` or
            ``"minimum"`` (see :func:`lightning_clr.range_test._rules.suggest`).
        smoothing: EMA weight of the newest loss (0.05 means beta = 0.95), bias-corrected, in [1e-4, 1].
        divergence_threshold: Stop once the smoothed loss exceeds this many times the best loss (> 1).
        metric: Optional torchmetrics metric (for example ``MulticlassAccuracy``) computed on the
            sweep's own batches; the bounds are then read off its curve. Its inputs come from
            ``training_step`` returning ``{"loss": ..., "preds": ..., "target": ...}``; otherwise the
            batch must be ``(x, y, ...)`` and the predictions are ``pl_module(x)``.
        base_divisor: ``base_lr = max_lr / base_divisor`` (Smith advises 3 to 4), >= 1.
        save: Save the plot (PNG) and the curve (JSON) under the trainer's ``log_dir``.
        progress_bar: Show a progress bar during the sweep.
        on_resume: Sweep also when :class:`~lightning_clr.CyclicLearningRate` joins a resumed run (a
            checkpoint without its state): the sweep then runs on trained weights. Off: no sweep, max_lr = the
            optimizer's LR and base_lr = max_lr / ``base_divisor``, with an info line.

    Example:
        >>> import numpy as np
        >>> RangeTestConfig(num_steps=np.int64(200), max_lr=np.float32(1.0)).num_steps
        200
        >>> RangeTestConfig(smoothing=True)
        Traceback (most recent call last):
        ...
        lightning_clr._validation.ArgumentError: `range_test.smoothing` must be a number in [0.0001, 1], got True
    """

    min_lr: float = 1e-7
    max_lr: float = 10.0
    num_steps: int = 100
    mode: Literal["exponential", "linear"] = "exponential"
    rule: Literal["smith", "valley", "steepest", "minimum"] = "smith"
    smoothing: float = 0.05
    divergence_threshold: float = 4.0
    metric: Optional[Metric] = None
    base_divisor: float = DEFAULT_BASE_DIVISOR
    save: bool = True
    progress_bar: bool = True
    on_resume: bool = False

    def __post_init__(self) -> None:
        def name(field_name: str) -> str:
            return f"range_test.{field_name}"

        values: dict[str, Any] = {
            "min_lr": learning_rate(name("min_lr"), self.min_lr),
            "max_lr": learning_rate(name("max_lr"), self.max_lr),
            "num_steps": int_in(name("num_steps"), self.num_steps, MIN_NUM_STEPS, MAX_NUM_STEPS),
            "mode": choice(name("mode"), self.mode, MODES),
            "rule": choice(name("rule"), self.rule, RULES),
            "smoothing": float_in(name("smoothing"), self.smoothing, SMOOTHING_MIN, 1.0),
            "divergence_threshold": float_in(
                name("divergence_threshold"), self.divergence_threshold, 1.0, math.inf, low_open=True, high_open=True
            ),
            "base_divisor": float_in(name("base_divisor"), self.base_divisor, 1.0, math.inf, high_open=True),
            "save": boolean(name("save"), self.save),
            "progress_bar": boolean(name("progress_bar"), self.progress_bar),
            "on_resume": boolean(name("on_resume"), self.on_resume),
        }
        if values["min_lr"] >= values["max_lr"]:
            raise ArgumentError(name("min_lr"), self.min_lr, f"< `range_test.max_lr` ({values['max_lr']!r})")
        _check_metric(self.metric)
        for key, value in values.items():
            object.__setattr__(self, key, value)  # frozen: store the plain Python value


def _check_metric(metric: Any) -> None:
    if metric is None:
        return
    if not isinstance(metric, Metric):
        raise ArgumentError("range_test.metric", metric, "a torchmetrics Metric or None")
    if metric.higher_is_better is None:
        raise ArgumentError(
            "range_test.metric",
            metric,
            "a Metric that says whether higher is better",
            f"{type(metric).__name__}.higher_is_better is None, so its curve cannot be read: set it on the metric",
        )


def _encode(values: list[float]) -> list[Any]:
    return [v if math.isfinite(v) else str(v) for v in values]  # JSON has no NaN/inf: "nan", "inf", "-inf"


def _decode(values: Optional[list[Any]]) -> list[float]:
    return [float(v) for v in values or []]


@dataclass
class RangeTestResult:
    """The curve of one range test and the bounds read off it.

    With several param groups the sweep moves ONE multiplier over the groups' configured LRs: the reference
    group is the one with the largest configured LR (the first of equals), and at each step every group gets
    ``lr * configured_lr_g / configured_lr_ref``. ``lrs``, ``base_lr`` and ``max_lr`` are the reference
    group's; :meth:`group_bounds` gives every group's, keeping the configured ratios.

    Attributes:
        lrs: LR of the reference group at each sweep step (one optimizer step each).
        losses: Raw training loss of each step (the mean over ranks and accumulated batches).
        smoothed_losses: Bias-corrected EMA of ``losses``.
        base_lr, max_lr: The bounds chosen by ``rule`` (of the reference group).
        rule: The rule's name.
        stopped_early: Whether the sweep stopped before ``num_steps``; ``stop_reason`` says why.
        fallback: Whether the rule could not read the curve and fell back; ``message`` says why.
        metric_name, metric_values, smoothed_metric: The optional metric's curve, when one was given;
            the bounds are then read off ``smoothed_metric``.
        suggestions: ``{rule: [base_lr, max_lr]}`` of every rule on the same curve, to compare rules.
        config: The settings the sweep ran with.
        group_lrs: The optimizer's configured LR of each param group at sweep start (empty: one group).
        skipped_batches: Batches for which ``training_step`` returned ``None`` (skipped: no backward, no
            optimizer step), on this rank.

    Example:
        >>> r = RangeTestResult(lrs=[1e-3, 1e-2], losses=[1.0, 0.5], smoothed_losses=[1.0, 0.7],
        ...                     base_lr=1e-3, max_lr=4e-3, rule="smith", group_lrs=[1e-4, 1e-3])
        >>> RangeTestResult.from_dict(r.to_dict()) == r
        True
        >>> [[round(x, 12) for x in side] for side in r.group_bounds()]
        [[0.0001, 0.001], [0.0004, 0.004]]
    """

    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    base_lr: float
    max_lr: float
    rule: str
    stopped_early: bool = False
    stop_reason: Optional[str] = None
    fallback: bool = False
    message: str = ""
    metric_name: Optional[str] = None
    metric_values: list[float] = field(default_factory=list)
    smoothed_metric: list[float] = field(default_factory=list)
    suggestions: dict[str, list[float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    group_lrs: list[float] = field(default_factory=list)
    skipped_batches: int = 0

    @property
    def reference_group(self) -> int:
        """Index of the param group whose LR the sweep's ``lrs`` are (the largest configured LR)."""
        if not self.group_lrs:
            return 0
        return self.group_lrs.index(max(self.group_lrs))

    def group_scales(self) -> list[float]:
        """``configured_lr_g / configured_lr_ref`` of each group (``[1.0]`` for one group)."""
        return group_scales(self.group_lrs) if self.group_lrs else [1.0]

    def group_bounds(self) -> tuple[list[float], list[float]]:
        """Per param group ``(base_lrs, max_lrs)``: the reference group's bounds times each group's ratio to
        it, so every group keeps its configured ratio to the others. One group: ``([base_lr], [max_lr])``."""
        scales = self.group_scales()
        return [self.base_lr * s for s in scales], [self.max_lr * s for s in scales]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite losses become the strings ``"nan"``, ``"inf"``, ``"-inf"``)."""
        out = asdict(self)
        for key in _CURVES:
            out[key] = _encode(out[key])
        out["version"] = RESULT_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RangeTestResult:
        """Inverse of :meth:`to_dict`; also reads version 1 (one param group, no skipped-batch count).

        Raises ``ValueError`` naming the key when a required key is missing or the version is unknown.
        """
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(f"range test result: key {missing[0]!r} is missing (keys: {sorted(map(str, data))})")
        version = data["version"]
        if isinstance(version, bool) or version not in (1, RESULT_VERSION):
            raise ValueError(
                f"range test result: unknown `version` {version!r} (this lightning_clr reads 1 and {RESULT_VERSION})"
            )
        return cls(
            lrs=_decode(data["lrs"]),
            losses=_decode(data["losses"]),
            smoothed_losses=_decode(data["smoothed_losses"]),
            base_lr=float(data["base_lr"]),
            max_lr=float(data["max_lr"]),
            rule=str(data["rule"]),
            stopped_early=bool(data.get("stopped_early", False)),
            stop_reason=data.get("stop_reason"),
            fallback=bool(data.get("fallback", False)),
            message=str(data.get("message", "")),
            metric_name=data.get("metric_name"),
            metric_values=_decode(data.get("metric_values")),
            smoothed_metric=_decode(data.get("smoothed_metric")),
            suggestions={k: [float(x) for x in v] for k, v in (data.get("suggestions") or {}).items()},
            config=dict(data.get("config") or {}),
            group_lrs=[float(x) for x in data.get("group_lrs") or []] if version >= 2 else [],
            skipped_batches=int(data.get("skipped_batches", 0)) if version >= 2 else 0,
        )

    def to_json(self, path: Optional[str] = None) -> str:
        """The result as strict JSON text (no NaN/Infinity literals); also written to ``path`` when given
        (atomically: a temp file renamed onto ``path``, so a symlink there is replaced, never followed)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> RangeTestResult:
        """Read a result from JSON text or from a JSON file's path."""
        text = text_or_path
        if not text_or_path.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as f:
                text = f.read()
        return cls.from_dict(json.loads(text))

    def plot(self, show_metric: bool = True) -> Figure:
        """A matplotlib Figure: the loss against the LR (log x), raw and smoothed, both bounds marked.

        Needs matplotlib (``pip install lightning-clr[plot]``).
        """
        return plot_range_test(self, show_metric=show_metric)


def group_scales(group_lrs: list[float]) -> list[float]:
    """Each configured LR divided by the largest: the reference group gets exactly 1.0.

    Example:
        >>> group_scales([1e-4, 1e-3, 1e-3])
        [0.1, 1.0, 1.0]
    """
    reference = max(group_lrs)
    return [lr / reference for lr in group_lrs]
