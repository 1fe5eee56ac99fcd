"""Leslie Smith's LR range test: sweep the LR over a few optimizer steps, read both CLR bounds off the loss
curve, and restore model, optimizer, RNG and trainer state exactly.

The modules, in the one direction data flows: ``_runner`` (run_range_test, lr_range_test, save_result) calls
``_sweep`` (the loop and the result), which uses ``_step`` (one optimizer step), ``_snapshot`` (exact restore),
``_rules`` (pure math of the bounds, on a reading of the curve by ``_reading``; ``_smoothing``: the EMA, noise
and the stop rule), ``_guards`` (what is refused), ``_signals`` (SIGTERM) and ``_types`` (RangeTestConfig,
RangeTestResult); ``_plot`` draws a result.

Example:
    >>> from lightning_clr.range_test import RangeTestConfig
    >>> RangeTestConfig(num_steps=200, rule="valley").num_steps
    200
"""

from lightning_clr.range_test._guards import refuse_sharded
from lightning_clr.range_test._plot import plot_range_test
from lightning_clr.range_test._runner import lr_range_test, run_range_test, save_result
from lightning_clr.range_test._types import RangeTestConfig, RangeTestResult

__all__ = [
    "RangeTestConfig",
    "RangeTestResult",
    "lr_range_test",
    "plot_range_test",
    "refuse_sharded",
    "run_range_test",
    "save_result",
]
