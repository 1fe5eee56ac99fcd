"""One sweep step of the range test, through the fit's own strategy and precision plugin.

In automatic optimization one sweep step is one optimizer step: ``accumulate_grad_batches`` training steps and
their backward passes (loss / accumulate, gradient sync blocked until the last one), then
``strategy.optimizer_step`` (GradScaler, unscale, ``configure_gradient_clipping``). A ``training_step`` that
returns ``None`` (Lightning's way to skip a batch) is skipped: no backward and no optimizer step for it, the
next batch takes its place. In manual optimization one sweep step is one ``training_step`` call; the user's own
``opt.step()`` applies the LR set on the optimizer.

Example:
    >>> skips = Skips(limit=2)  # the sweep uses limit=num_steps
    >>> skips.batch_ran()
    >>> (skips.total, skips.in_a_row)
    (0, 0)
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_clr._lightning import combined_loader, loader_iterator, on_before_batch_transfer, set_loader_iterator

__all__ = ["Batches", "Skips", "one_step"]

FeedMetric = Optional[Callable[[Any, Any], None]]


class Batches:
    """The fit's train batches, moved to the device as the fit loop does; cycles when exhausted."""

    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trainer, self.pl_module = trainer, pl_module
        self.combined = combined_loader(trainer)
        self.saved_iterator = loader_iterator(self.combined)
        self.started = False
        self.in_pass = 0
        self.passes = 0

    def next(self) -> tuple[Any, int]:
        if not self.started:
            iter(self.combined)
            self.started = True
        try:
            batch, _, _ = next(self.combined)
        except StopIteration:
            if self.in_pass == 0:
                raise ValueError("The LR range test got no batches from the train dataloader.") from None
            self.passes += 1
            self.in_pass = 0
            iter(self.combined)  # cycle: a dataloader shorter than the sweep starts over
            batch, _, _ = next(self.combined)
        idx = self.in_pass
        self.in_pass += 1
        trainer = self.trainer
        batch = trainer.precision_plugin.convert_input(batch)
        batch = on_before_batch_transfer(self.pl_module, batch)
        batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
        return batch, idx

    def close(self) -> None:
        current = loader_iterator(self.combined)
        if self.started and current is not None:
            current.reset()
        set_loader_iterator(self.combined, self.saved_iterator)


class Skips:
    """Counts batches whose ``training_step`` returned ``None``; warns at the first, raises after ``limit`` in a
    row (a ``training_step`` that skips everything would otherwise cycle the dataloader forever)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.in_a_row = 0

    def batch_ran(self) -> None:
        self.in_a_row = 0

    def skipped(self, step: int) -> None:
        self.total += 1
        self.in_a_row += 1
        if self.total == 1:
            rank_zero_warn(
                f"LR range test: `training_step` returned None at sweep step {step}; that batch is skipped"
                " (no backward, no optimizer step) and the next batch takes its place. Skipped batches are"
                " counted in `RangeTestResult.skipped_batches`."
            )
        if self.in_a_row > self.limit:
            raise ValueError(
                f"The LR range test got None from `training_step` for {self.in_a_row} batches in a row (sweep step"
                f" {step}), more than the sweep's {self.limit} steps: it cannot record a loss. Return the loss for"
                " the sweep's batches, or give `base_lr` and `max_lr` explicitly."
            )


def loss_of(output: Any, step: int, manual: bool = False) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    if isinstance(output, Mapping):
        what = f"a dict without a scalar 'loss' tensor (keys: {sorted(map(str, output))})"
    else:
        what = repr(output) if output is None else f"a {type(output).__name__}"
    where = " In manual optimization the sweep cannot skip a batch: the optimizer already stepped." if manual else ""
    raise ValueError(
        f"The LR range test needs the loss, but `training_step` returned {what} at sweep step {step}.{where}"
        " Return the loss tensor or a dict with 'loss' (also in manual optimization, after `opt.step()`)."
    )


def metric_inputs(output: Any, batch: Any, pl_module: pl.LightningModule, trainer: pl.Trainer) -> tuple[Any, Any]:
    """Convention: ``training_step`` returns ``{"loss", "preds", "target"}``; else ``pl_module(x)`` on ``(x, y)``."""
    if isinstance(output, Mapping) and "preds" in output and "target" in output:
        return output["preds"].detach(), output["target"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        flags = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                preds = pl_module(batch[0])
        finally:
            for m, flag in flags:
                m.training = flag
        return preds, batch[1]
    raise ValueError(
        "The range test `metric` needs predictions: return {'loss': loss, 'preds': preds, 'target': target}"
        f" from `training_step`, or use batches `(x, y)` so that preds = pl_module(x); got a {type(batch).__name__}"
    )


def _no_sync(strategy: Any) -> Any:
    block = getattr(strategy, "block_backward_sync", None)
    return block() if block is not None else nullcontext()


def one_step(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    optimizer: Any,
    batches: Batches,
    skips: Skips,
    step: int,
    feed_metric: FeedMetric,
) -> torch.Tensor:
    """One sweep step; returns this rank's loss (mean over accumulated batches), detached, float32."""
    strategy = trainer.strategy
    if not pl_module.automatic_optimization:
        batch, idx = batches.next()
        output = strategy.training_step(batch, idx)
        loss = loss_of(output, step, manual=True)
        if feed_metric is not None:
            feed_metric(output, batch)
        return loss.detach().float().reshape(())
    return _automatic_step(trainer, optimizer, batches, skips, step, feed_metric)


def _automatic_step(
    trainer: pl.Trainer, optimizer: Any, batches: Batches, skips: Skips, step: int, feed_metric: FeedMetric
) -> torch.Tensor:
    strategy = trainer.strategy
    accumulate = max(1, int(trainer.accumulate_grad_batches))
    losses: list[torch.Tensor] = []
    optimizer.zero_grad()

    def forward_backward(batch: Any, idx: int) -> Optional[torch.Tensor]:
        output = strategy.training_step(batch, idx)
        if output is None:
            return None
        loss = loss_of(output, step)
        if feed_metric is not None:
            feed_metric(output, batch)
        strategy.backward(loss / accumulate, optimizer)
        return loss

    batch, idx, loss = None, 0, None
    while len(losses) < accumulate:
        batch, idx = batches.next()
        last = len(losses) == accumulate - 1
        with nullcontext() if last else _no_sync(strategy):  # DDP syncs gradients on the last backward only
            loss = forward_backward(batch, idx)
        if loss is None:
            skips.skipped(step)
            continue
        skips.batch_ran()
        losses.append(loss.detach().float().reshape(()))
    first_call = [loss]

    def closure() -> torch.Tensor:
        if first_call:  # the last batch's forward and backward already ran (to see whether it was skipped)
            return first_call.pop()
        again = forward_backward(batch, idx)  # an optimizer that re-evaluates the closure (LBFGS)
        return again if again is not None else loss_of(None, step)

    strategy.optimizer_step(optimizer, closure)
    return torch.stack(losses).mean()
