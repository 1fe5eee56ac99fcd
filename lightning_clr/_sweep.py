"""The LR sweep of the range test, run inside a live fit through the fit's own strategy and precision.

One sweep step is one optimizer step: ``accumulate_grad_batches`` training steps, their backward
passes (loss / accumulate, gradient sync blocked until the last one), then
``strategy.optimizer_step`` (GradScaler, unscale, ``configure_gradient_clipping``). In manual
optimization one sweep step is one ``training_step`` call; the user's own ``opt.step()`` applies the LR
set on the optimizer. The decision value is the loss averaged over ranks, so every rank stops at the
same step. Everything is restored in ``finally`` from an in-memory :class:`~lightning_clr._snapshot.Snapshot`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

from lightning_clr._rules import BiasCorrectedEMA, DivergenceCheck, suggest_all, sweep_lrs
from lightning_clr._snapshot import Snapshot

if TYPE_CHECKING:
    from lightning_clr.range_test import RangeTestConfig, RangeTestResult

SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def refuse_sharded(strategy: Any) -> None:
    """Raise for FSDP, DeepSpeed and other sharded strategies (or a subclass), naming the strategy."""
    cls = type(strategy)
    sharded = [c.__name__ for c in cls.__mro__ if c.__name__ in SHARDED_STRATEGIES]
    if sharded:
        kind = cls.__name__ if cls.__name__ == sharded[0] else f"{cls.__name__} (a {sharded[0]})"
        raise ValueError(
            f"The LR range test cannot run under the sharded strategy {kind}: its in-memory snapshot needs the"
            " full parameters on every rank. Give both `base_lr` and `max_lr` explicitly (for example found"
            " once with strategy='ddp')."
        )


def check_supported(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """Refuse what the range test cannot do, before any step. Returns the single optimizer."""
    refuse_sharded(trainer.strategy)
    optimizers = [opt for opt in trainer.optimizers if type(opt).__name__ != "_MockOptimizer"]
    if len(optimizers) != 1:
        raise ValueError(
            f"The LR range test needs exactly one optimizer, found {len(optimizers)}"
            " (configure_optimizers): give `base_lr` and `max_lr` explicitly."
        )
    if trainer.fit_loop._combined_loader is None:
        raise ValueError(
            "The LR range test needs the train dataloader of a running fit: call it from `on_train_start`"
            " of `trainer.fit` (or use `lightning_clr.lr_range_test`)."
        )
    if is_param_in_hook_signature(pl_module.training_step, "dataloader_iter", explicit=True):
        raise ValueError(
            "The LR range test does not support a `training_step(dataloader_iter)`: give `base_lr` and `max_lr`."
        )
    return optimizers[0]


def _loss_of(output: Any, step: int) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    if isinstance(output, Mapping):
        what = f"a dict without a scalar 'loss' tensor (keys: {sorted(map(str, output))})"
    else:
        what = repr(output) if output is None else f"a {type(output).__name__}"
    raise ValueError(
        f"The LR range test needs the loss, but `training_step` returned {what} at sweep step {step}."
        " Return the loss tensor or a dict with 'loss' (also in manual optimization, after `opt.step()`)."
    )


def _metric_inputs(output: Any, batch: Any, pl_module: pl.LightningModule, trainer: pl.Trainer) -> tuple[Any, Any]:
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


def _generators(dataloaders: list[Any]) -> list[torch.Generator]:
    found = []
    for dl in dataloaders:
        for owner in (dl, getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator):
                found.append(gen)
    return found


class _Batches:
    """The fit's train batches, moved to the device as the fit loop does; cycles when exhausted."""

    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trainer, self.pl_module = trainer, pl_module
        self.combined = trainer.fit_loop._combined_loader
        self.saved_iterator = self.combined._iterator
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
        batch = self.pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
        batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
        return batch, idx

    def close(self) -> None:
        if self.started and self.combined._iterator is not None:
            self.combined._iterator.reset()
        self.combined._iterator = self.saved_iterator


def _no_sync(strategy: Any) -> Any:
    block = getattr(strategy, "block_backward_sync", None)
    return block() if block is not None else nullcontext()


def _one_step(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    optimizer: Any,
    batches: _Batches,
    step: int,
    feed_metric: Optional[Callable[[Any, Any], None]],
) -> torch.Tensor:
    """One sweep step; returns this rank's loss (mean over accumulated batches), detached, float32."""
    strategy = trainer.strategy
    if not pl_module.automatic_optimization:
        batch, idx = batches.next()
        output = strategy.training_step(batch, idx)
        loss = _loss_of(output, step)
        if feed_metric is not None:
            feed_metric(output, batch)
        return loss.detach().float().reshape(())

    accumulate = max(1, int(trainer.accumulate_grad_batches))
    losses: dict[int, torch.Tensor] = {}
    optimizer.zero_grad()
    for micro in range(accumulate):
        batch, idx = batches.next()

        def closure(batch: Any = batch, idx: int = idx, micro: int = micro) -> torch.Tensor:
            output = strategy.training_step(batch, idx)
            loss = _loss_of(output, step)
            if feed_metric is not None:
                feed_metric(output, batch)
            strategy.backward(loss / accumulate, optimizer)
            losses[micro] = loss.detach().float().reshape(())
            return loss

        if micro < accumulate - 1:
            with _no_sync(strategy):
                closure()
        else:
            strategy.optimizer_step(optimizer, closure)
    return torch.stack([losses[k] for k in sorted(losses)]).mean()


def sweep(
    trainer: pl.Trainer, pl_module: pl.LightningModule, config: RangeTestConfig, progress_bar: Optional[bool] = None
) -> RangeTestResult:
    from lightning_clr.range_test import RangeTestResult

    optimizer = check_supported(trainer, pl_module)
    fallback_lr = float(optimizer.param_groups[0]["lr"])
    lrs = sweep_lrs(config.min_lr, config.max_lr, config.num_steps, config.mode)
    if progress_bar is None:
        progress_bar = trainer.progress_bar_callback is not None
    show = bool(config.progress_bar and progress_bar and trainer.is_global_zero)
    metric = config.metric
    combined = trainer.fit_loop._combined_loader
    snapshot = Snapshot.capture(
        pl_module,
        [optimizer],
        schedulers=[c.scheduler for c in trainer.lr_scheduler_configs],
        scaler=getattr(trainer.precision_plugin, "scaler", None),
        generators=_generators(list(combined.flattened)),
        fit_loop=trainer.fit_loop,
    )
    saved_callbacks, saved_should_stop = trainer.callbacks, trainer.should_stop
    saved_log = {name: pl_module.__dict__.get(name) for name in ("log", "log_dict")}
    batches = _Batches(trainer, pl_module)
    losses: list[float] = []
    smoothed: list[float] = []
    metric_values: list[float] = []
    stop_reason: Optional[str] = None
    diverged_at: Optional[float] = None
    feed_metric = None
    if metric is not None:
        metric.to(pl_module.device)
        metric.reset()

        def feed_metric(output: Any, batch: Any) -> None:
            preds, target = _metric_inputs(output, batch, pl_module, trainer)
            metric.update(preds, target)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(lrs), desc="LR range test", disable=not show, leave=False, dynamic_ncols=True)
    try:
        trainer.callbacks = []  # other callbacks' hooks must not see the sweep
        pl_module.log = _noop  # type: ignore[method-assign]
        pl_module.log_dict = _noop  # type: ignore[method-assign]
        ema = BiasCorrectedEMA(config.smoothing)
        check = DivergenceCheck(config.divergence_threshold, config.smoothing, len(lrs))
        with torch.enable_grad():
            for step, lr in enumerate(lrs):
                for group in optimizer.param_groups:
                    group["lr"] = lr
                local = _one_step(trainer, pl_module, optimizer, batches, step, feed_metric)
                value = float(trainer.strategy.reduce(local.clone(), reduce_op="mean"))
                losses.append(value)
                if metric is not None:
                    metric_values.append(float(metric.compute()))
                    metric.reset()
                bar.update(1)
                if not math.isfinite(value):
                    smoothed.append(math.nan)
                    stop_reason = f"the loss became {value} at lr={lr:.3g} (step {step})"
                    diverged_at = lr
                    break
                s = ema.update(value)
                smoothed.append(s)
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{s:.4g}", refresh=False)
                if check.update(s):
                    stop_reason = (
                        f"the smoothed loss {s:.4g} exceeded {config.divergence_threshold:g} x the best"
                        f" {check.best:.4g} at lr={lr:.3g} (step {step})"
                    )
                    diverged_at = lr
                    break
    finally:
        snapshot.restore()  # first: nothing below may leave the model with the sweep's weights
        bar.close()
        trainer.callbacks = saved_callbacks
        trainer.should_stop = saved_should_stop
        for name, value in saved_log.items():
            if value is None:
                pl_module.__dict__.pop(name, None)
            else:
                pl_module.__dict__[name] = value
        batches.close()
        if metric is not None:
            metric.reset()

    lrs = lrs[: len(losses)]
    smoothed_metric: list[float] = []
    curve = smoothed
    if metric is not None:
        smoothed_metric = _smooth_prefix(metric_values, smoothed, config)
        sign = -1.0 if getattr(metric, "higher_is_better", None) is not False else 1.0
        curve = [sign * v for v in smoothed_metric]
    suggestions = suggest_all(
        lrs,
        curve,
        fallback_max_lr=fallback_lr,
        diverged_at=diverged_at,
        base_divisor=config.base_divisor,
        raw=losses if metric is None else None,  # the instability check reads raw losses, not a metric
    )
    chosen = suggestions[config.rule]
    if chosen.fallback:
        rank_zero_warn(f"LR range test: {chosen.reason}")
    if batches.passes:
        rank_zero_warn(
            f"LR range test: the train dataloader is shorter than the sweep; it was cycled {batches.passes} time(s)."
        )
    return RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=smoothed,
        base_lr=chosen.base_lr,
        max_lr=chosen.max_lr,
        rule=config.rule,
        stopped_early=stop_reason is not None,
        stop_reason=stop_reason,
        fallback=chosen.fallback,
        message=chosen.reason,
        metric_name=type(metric).__name__ if metric is not None else None,
        metric_values=metric_values,
        smoothed_metric=smoothed_metric,
        suggestions={k: [v.base_lr, v.max_lr] for k, v in suggestions.items()},
        config={k: getattr(config, k) for k in (
            "min_lr", "max_lr", "num_steps", "mode", "rule", "smoothing", "divergence_threshold", "base_divisor"
        )},
    )


def _smooth_prefix(values: list[float], smoothed_losses: list[float], config: RangeTestConfig) -> list[float]:
    """Smoothed metric, NaN where the loss was non-finite (those points are not read)."""
    ema = BiasCorrectedEMA(config.smoothing)
    out = []
    for v, s in zip(values, smoothed_losses):
        out.append(ema.update(v) if math.isfinite(s) and math.isfinite(v) else math.nan)
    return out
