"""Leslie Smith's LR range test: sweep the LR over a few optimizer steps, read both CLR bounds off
the loss curve, and restore model, optimizer, RNG and trainer state exactly.

CONTRACT (the callback depends on it):
- ``RangeTestConfig``: validated settings, a frozen dataclass so LightningCLI can set its fields.
- ``run_range_test(trainer, pl_module, config) -> RangeTestResult``: called by the callback from
  ``on_train_start`` of a running fit (every rank), restores everything before returning.
- ``RangeTestResult``: ``lrs``, ``losses``, ``smoothed_losses``, ``base_lr``, ``max_lr``, ``rule``,
  ``stopped_early``, ``stop_reason``, ``plot()``, ``to_dict()``, ``from_dict()``.
- ``lr_range_test(trainer, model, ...)``: the standalone function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from torchmetrics import Metric

__all__ = ["RangeTestConfig"]

MIN_NUM_STEPS = 10


@dataclass(frozen=True)
class RangeTestConfig:
    """Settings of the LR range test.

    Args:
        min_lr: First LR of the sweep.
        max_lr: Last LR of the sweep (the sweep usually stops earlier, at divergence).
        num_steps: Optimizer steps in the sweep (at least 10).
        mode: ``"exponential"`` (even steps in log-LR, the default) or ``"linear"``.
        rule: How both bounds are read off the curve: ``"smith"``, ``"valley"`` or ``"steepest"``.
        smoothing: EMA weight of the newest loss (0.05 means beta = 0.95), bias-corrected.
        divergence_threshold: Stop once the smoothed loss exceeds this many times the best loss.
        metric: Optional torchmetrics metric (for example ``MulticlassAccuracy``) computed on the
            sweep's own batches; the bounds are then read off its curve.
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
    rule: Literal["smith", "valley", "steepest"] = "smith"
    smoothing: float = 0.05
    divergence_threshold: float = 4.0
    metric: Optional[Metric] = None
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
        if not (0 < self.smoothing <= 1):
            raise ValueError(f"range test `smoothing` must be in (0, 1], got {self.smoothing!r}")
        if not (self.divergence_threshold > 1) or not math.isfinite(self.divergence_threshold):
            raise ValueError(f"range test `divergence_threshold` must be a finite number > 1, got {self.divergence_threshold!r}")
