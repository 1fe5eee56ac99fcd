"""Leslie Smith's LR range test: sweep the LR over a few optimizer steps, read both CLR bounds off
the loss curve, and restore model, optimizer, RNG and trainer state exactly.

CONTRACT (the callback depends on it):
- ``RangeTestConfig``: validated settings, a frozen dataclass so LightningCLI can set its fields.
- ``run_range_test(trainer, pl_module, config) -> RangeTestResult``: called by the callback from
  ``on_train_start`` of a running fit (every rank), restores everything before returning.
- ``RangeTestResult``: ``lrs``, ``losses``, ``smoothed_losses``, ``base_lr``, ``max_lr``, ``rule``,
  ``stopped_early``, ``stop_reason``, ``plot()``, ``to_dict()``, ``from_dict()``.
- ``lr_range_test(trainer, model, ...)``: the standalone function.

The sweep itself lives in :mod:`lightning_clr._sweep`, the snapshot in :mod:`lightning_clr._snapshot`,
the rules in :mod:`lightning_clr._rules`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import Metric

from lightning_clr.range_test._rules import DEFAULT_BASE_DIVISOR, RULES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RangeTestConfig", "RangeTestResult", "lr_range_test", "run_range_test"]

MIN_NUM_STEPS = 10
RESULT_FILENAME = "lr_range_test"  # .json and .png under the trainer's log_dir


@dataclass(frozen=True)
class RangeTestConfig:
    """Settings of the LR range test.

    Args:
        min_lr: First LR of the sweep.
        max_lr: Last LR of the sweep (the sweep usually stops earlier, at divergence).
        num_steps: Optimizer steps in the sweep (at least 10).
        mode: ``"exponential"`` (even steps in log-LR, the default) or ``"linear"``.
        rule: How both bounds are read off the curve: ``"smith"``, ``"valley"``, ``"steepest"`` or
            ``"minimum"`` (see :func:`lightning_clr._rules.suggest`).
        smoothing: EMA weight of the newest loss (0.05 means beta = 0.95), bias-corrected.
        divergence_threshold: Stop once the smoothed loss exceeds this many times the best loss.
        metric: Optional torchmetrics metric (for example ``MulticlassAccuracy``) computed on the
            sweep's own batches; the bounds are then read off its curve. Its inputs come from
            ``training_step`` returning ``{"loss": ..., "preds": ..., "target": ...}``; otherwise the
            batch must be ``(x, y, ...)`` and the predictions are ``pl_module(x)``.
        base_divisor: ``base_lr = max_lr / base_divisor`` (Smith advises 3 to 4).
        save: Save the plot (PNG) and the curve (JSON) under the trainer's ``log_dir``.
        progress_bar: Show a progress bar during the sweep.

    Example:
        >>> RangeTestConfig(num_steps=200, rule="valley").num_steps
        200
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

    def __post_init__(self) -> None:
        for name in ("min_lr", "max_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"range test `{name}` must be a finite number > 0, got {value!r}")
        if self.min_lr >= self.max_lr:
            raise ValueError(f"range test `min_lr` ({self.min_lr!r}) must be < `max_lr` ({self.max_lr!r})")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < MIN_NUM_STEPS:
            raise ValueError(f"range test `num_steps` must be an int >= {MIN_NUM_STEPS}, got {self.num_steps!r}")
        if self.mode not in ("exponential", "linear"):
            raise ValueError(f"range test `mode` must be 'exponential' or 'linear', got {self.mode!r}")
        if self.rule not in RULES:
            raise ValueError(f"range test `rule` must be one of {', '.join(map(repr, RULES))}, got {self.rule!r}")
        if not isinstance(self.smoothing, (int, float)) or not (0 < self.smoothing <= 1):
            raise ValueError(f"range test `smoothing` must be in (0, 1], got {self.smoothing!r}")
        if not isinstance(self.divergence_threshold, (int, float)) or not (
            1 < self.divergence_threshold < math.inf
        ):
            raise ValueError(
                f"range test `divergence_threshold` must be a finite number > 1, got {self.divergence_threshold!r}"
            )
        if not isinstance(self.base_divisor, (int, float)) or not (1 <= self.base_divisor < math.inf):
            raise ValueError(f"range test `base_divisor` must be a finite number >= 1, got {self.base_divisor!r}")
        if self.metric is not None and not isinstance(self.metric, Metric):
            raise ValueError(f"range test `metric` must be a torchmetrics Metric, got {self.metric!r}")
        if self.metric is not None and self.metric.higher_is_better is None:
            raise ValueError(
                f"range test `metric` {type(self.metric).__name__} does not say whether higher is better"
                " (`higher_is_better` is None), so its curve cannot be read: set `higher_is_better` on it"
            )


def _encode(values: list[float]) -> list[Any]:
    return [v if math.isfinite(v) else str(v) for v in values]  # JSON has no NaN/inf: "nan", "inf", "-inf"


def _decode(values: Optional[list[Any]]) -> list[float]:
    return [float(v) for v in values or []]


@dataclass
class RangeTestResult:
    """The curve of one range test and the bounds read off it.

    Attributes:
        lrs: LR of each sweep step (one optimizer step each).
        losses: Raw training loss of each step (the mean over ranks and accumulated batches).
        smoothed_losses: Bias-corrected EMA of ``losses``.
        base_lr, max_lr: The bounds chosen by ``rule``.
        rule: The rule's name.
        stopped_early: Whether the sweep stopped before ``num_steps``; ``stop_reason`` says why.
        fallback: Whether the rule could not read the curve and fell back; ``message`` says why.
        metric_name, metric_values, smoothed_metric: The optional metric's curve, when one was given;
            the bounds are then read off ``smoothed_metric``.
        suggestions: ``{rule: [base_lr, max_lr]}`` of every rule on the same curve, to compare rules.

    Example:
        >>> r = RangeTestResult(lrs=[1e-3, 1e-2], losses=[1.0, 0.5], smoothed_losses=[1.0, 0.7],
        ...                     base_lr=1e-3, max_lr=4e-3, rule="smith")
        >>> RangeTestResult.from_dict(r.to_dict()) == r
        True
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite losses become the strings ``"nan"``, ``"inf"``, ``"-inf"``)."""
        out = asdict(self)
        for key in ("lrs", "losses", "smoothed_losses", "metric_values", "smoothed_metric"):
            out[key] = _encode(out[key])
        out["version"] = 1
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RangeTestResult:
        """Inverse of :meth:`to_dict`."""
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
        )

    def to_json(self, path: Optional[str] = None) -> str:
        """The result as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
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
        from lightning_clr.range_test._plot import plot_range_test

        return plot_range_test(self, show_metric=show_metric)


def run_range_test(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    config: Optional[RangeTestConfig] = None,
    *,
    progress_bar: Optional[bool] = None,
) -> RangeTestResult:
    """Run the sweep inside a running fit (``on_train_start``, on every rank), restore, read the bounds.

    The sweep goes through the fit's strategy, precision plugin (autocast, GradScaler), gradient
    accumulation and gradient clipping. Callback hooks do not fire during it and ``self.log`` is a
    no-op; the LightningModule's own hooks do fire. A train dataloader shorter than the sweep is
    cycled. Afterwards parameters, buffers, gradients, optimizer and scheduler state, the GradScaler,
    the RNG states and the fit loop's counters are bitwise what they were. With ``config.save``, the
    curve (JSON) and plot (PNG) go under ``trainer.log_dir`` (only global rank 0 writes), and the figure
    to loggers that take figures (TensorBoard).

    Example:
        >>> from lightning.pytorch.callbacks import Callback
        >>> class FindBounds(Callback):
        ...     def on_train_start(self, trainer, pl_module):
        ...         self.result = run_range_test(trainer, pl_module, RangeTestConfig(num_steps=50))
    """
    from lightning_clr.range_test._sweep import sweep

    config = config if config is not None else RangeTestConfig()
    if not isinstance(config, RangeTestConfig):
        raise ValueError(f"`config` must be a RangeTestConfig, got {config!r}")
    result = sweep(trainer, pl_module, config, progress_bar=progress_bar)
    if config.save:
        _save_outputs(trainer, result)
    return result


def save_result(result: RangeTestResult, directory: str) -> tuple[list[str], Optional[Figure]]:
    """Write the curve (``lr_range_test.json``) and, with matplotlib, the plot (``lr_range_test.png``) under
    ``directory``. Returns the paths written and the figure (``None`` without matplotlib, with a warning)."""
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, RESULT_FILENAME + ".json")
    result.to_json(json_path)
    try:
        figure = result.plot()
    except ImportError as err:
        rank_zero_warn(f"LR range test: curve saved to {json_path}, but not plotted: {err}")
        return [json_path], None
    png_path = os.path.join(directory, RESULT_FILENAME + ".png")
    figure.savefig(png_path, dpi=100)
    return [json_path, png_path], figure


def _save_outputs(trainer: pl.Trainer, result: RangeTestResult) -> None:
    directory = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank calls it
    if not trainer.is_global_zero:
        return
    # Rank 0 alone writes: an error here must not stop it while the other ranks go on into a collective.
    try:
        paths, figure = save_result(result, directory)
        for logger in trainer.loggers if figure is not None else []:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("lr_range_test", figure, global_step=trainer.global_step, close=False)
    except Exception as err:  # noqa: BLE001 - a failed save must not hang the other ranks
        rank_zero_warn(f"LR range test: could not save the curve or its plot under {directory}: {err!r}")
        return
    rank_zero_info(f"LR range test: saved {' and '.join(paths)}")


class _StandaloneRangeTest(Callback):
    """Runs the range test at ``on_train_start`` of a private fit, then stops the fit before any step."""

    def __init__(self, config: RangeTestConfig, progress_bar: bool) -> None:
        self.config = config
        self.progress_bar = progress_bar
        self.result: Optional[RangeTestResult] = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self.result = run_range_test(trainer, pl_module, self.config, progress_bar=self.progress_bar)
        finally:
            trainer.should_stop = True


def lr_range_test(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    train_dataloaders: Any = None,
    datamodule: Any = None,
    config: Optional[RangeTestConfig] = None,
) -> RangeTestResult:
    """The range test on its own, like ``Tuner.lr_find``: returns the curve and both bounds.

    Runs ``trainer.fit`` with only a private callback (the trainer's own callbacks and the sanity
    check are off for it); the callback runs the test at ``on_train_start`` and stops the fit before any
    real step. The model comes back bitwise unchanged and the trainer can be used for a later fit.

    Example:
        >>> import lightning.pytorch as pl, lightning_clr
        >>> # result = lightning_clr.lr_range_test(pl.Trainer(max_epochs=5), model, datamodule=dm)
        >>> # result.base_lr, result.max_lr; result.plot()
    """
    config = config if config is not None else RangeTestConfig()
    if not isinstance(config, RangeTestConfig):
        raise ValueError(f"`config` must be a RangeTestConfig, got {config!r}")
    runner = _StandaloneRangeTest(config, trainer.progress_bar_callback is not None)
    saved_callbacks, saved_sanity = trainer.callbacks, trainer.num_sanity_val_steps
    fit_loop = trainer.fit_loop
    saved_minimums = fit_loop.min_epochs, fit_loop.epoch_loop.min_steps
    try:
        trainer.callbacks = [runner]
        trainer.num_sanity_val_steps = 0
        # `should_stop` is ignored until min_epochs/min_steps are met: the private fit must not train.
        fit_loop.min_epochs, fit_loop.epoch_loop.min_steps = None, None
        trainer.fit(model, train_dataloaders=train_dataloaders, datamodule=datamodule)
    finally:
        trainer.callbacks = saved_callbacks
        trainer.num_sanity_val_steps = saved_sanity
        fit_loop.min_epochs, fit_loop.epoch_loop.min_steps = saved_minimums
        trainer.should_stop = False
    if runner.result is None:
        raise RuntimeError(
            "lr_range_test: the fit ended before `on_train_start`, so the range test did not run"
            f" (max_steps={trainer.max_steps!r}, limit_train_batches={trainer.limit_train_batches!r}:"
            " does the model have training batches?)"
        )
    return runner.result
