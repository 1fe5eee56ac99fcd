"""Running the range test: inside a live fit (:func:`run_range_test`, what the callback calls from
``on_train_start``), on its own (:func:`lr_range_test`, like ``Tuner.lr_find``), and saving its curve and plot
(:func:`save_result`).

Data flows one way: this runner calls :mod:`~lightning_clr.range_test._sweep`, which uses the step, snapshot,
rules and types modules; none of them imports the runner.

Example:
    >>> from lightning.pytorch.callbacks import Callback
    >>> class FindBounds(Callback):
    ...     def on_train_start(self, trainer, pl_module):
    ...         self.result = run_range_test(trainer, pl_module, RangeTestConfig(num_steps=50))
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_clr._compat import callback_bases
from lightning_clr._outputs import atomic_write_figure, atomic_write_text, publish
from lightning_clr.range_test._sweep import sweep
from lightning_clr.range_test._types import RangeTestConfig, RangeTestResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RESULT_FILENAME", "lr_range_test", "run_range_test", "save_result"]

RESULT_FILENAME = "lr_range_test"  # .json and .png under the trainer's log_dir


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
    the RNG states and the fit loop's counters are bitwise what they were. With ``config.save``, global
    rank 0 writes the curve (JSON) and plot (PNG) into the trainer's loggers: TensorBoard and CSV get the
    files in their directories (TensorBoard the figure too), MLflow artifacts of its run, W&B an image and
    a file; with no such logger they go under
    ``trainer.default_root_dir``.

    Example:
        >>> from lightning.pytorch.callbacks import Callback
        >>> class FindBounds(Callback):
        ...     def on_train_start(self, trainer, pl_module):
        ...         self.result = run_range_test(trainer, pl_module, RangeTestConfig(num_steps=50))
    """
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
    json_path, png_path = (os.path.join(directory, RESULT_FILENAME + ext) for ext in (".json", ".png"))
    atomic_write_text(json_path, result.to_json())
    figure = _figure(result, json_path)
    if figure is None:
        return [json_path], None
    atomic_write_figure(png_path, figure)
    return [json_path, png_path], figure


def _figure(result: RangeTestResult, where: str) -> Optional[Figure]:
    try:
        return result.plot()
    except ImportError as err:
        rank_zero_warn(f"LR range test: the curve is saved ({where}), but not plotted: {err}")
        return None


def _save_outputs(trainer: pl.Trainer, result: RangeTestResult) -> None:
    """Into the logger the user chose (TensorBoard, CSV, MLflow, W&B), else under ``default_root_dir``: global
    rank 0 alone writes, with no collective, and a failed write warns (the other ranks go on)."""
    if not trainer.is_global_zero:
        return
    figure = _figure(result, "in the trainer's loggers")
    paths = publish(trainer, RESULT_FILENAME, json_text=result.to_json(), figure=figure)
    if paths:
        rank_zero_info(f"LR range test: saved {' and '.join(paths)}")


class _StandaloneRangeTest(*callback_bases()):
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
