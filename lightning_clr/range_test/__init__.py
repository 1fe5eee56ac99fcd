"""Leslie Smith's LR range test: sweep the LR over a few optimizer steps, read both CLR bounds off the loss
curve, and restore model, optimizer, RNG and trainer state exactly.

Example:
    >>> from lightning_clr.range_test import RangeTestConfig
    >>> RangeTestConfig(num_steps=200, rule="valley").num_steps
    200
"""

from lightning_clr.range_test._plot import plot_range_test
from lightning_clr.range_test._runner import (
    RangeTestConfig,
    RangeTestResult,
    lr_range_test,
    run_range_test,
    save_result,
)
from lightning_clr.range_test._sweep import refuse_sharded

__all__ = [
    "RangeTestConfig",
    "RangeTestResult",
    "lr_range_test",
    "plot_range_test",
    "refuse_sharded",
    "run_range_test",
    "save_result",
]
