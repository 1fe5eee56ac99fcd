"""The LR sweep of the range test, run inside a live fit, and the result read off its curve.

Each sweep step (:func:`lightning_clr.range_test._step.one_step`) is one optimizer step at the sweep's LR. The
sweep moves one multiplier over the param groups' configured LRs, so groups keep their ratios; ``lrs`` are
the reference group's (the largest configured LR). The decision value is the loss averaged over ranks, in one
all-reduce per step that also carries each rank's SIGTERM flag, so every rank stops at the same step. A SIGTERM
(``trainer.received_sigterm``, set by Lightning's signal connector) ends the sweep after the current step with
Lightning's own ``SIGTERMException``, which ends the fit as Lightning ends training on SIGTERM (see
:mod:`~lightning_clr.range_test._signals`). Everything is
restored in ``finally`` from an in-memory :class:`~lightning_clr.range_test._snapshot.Snapshot`, before any
exception leaves the sweep.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_clr.range_test._guards import check_supported, configured_lrs
from lightning_clr.range_test._rules import BiasCorrectedEMA, DivergenceCheck, suggest_all, sweep_lrs
from lightning_clr.range_test._signals import raise_sigterm, sigterm_without_collectives
from lightning_clr.range_test._snapshot import Snapshot
from lightning_clr.range_test._step import Batches, FeedMetric, Skips, metric_inputs, one_step
from lightning_clr.range_test._types import RangeTestConfig, RangeTestResult, group_scales

__all__ = ["Curve", "sweep"]

_CONFIG_KEYS = ("min_lr", "max_lr", "num_steps", "mode", "rule", "smoothing", "divergence_threshold", "base_divisor")


_STEP_HOOKS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class Curve:
    """The sweep's curve as it is recorded, and the stop decision (no torch, no Lightning).

    Example:
        >>> curve = Curve(smoothing=1.0, divergence_threshold=4.0)
        >>> [curve.add(lr, step, loss) for step, (lr, loss) in enumerate([(0.1, 1.0), (0.2, 0.5), (0.4, 3.0)])]
        [False, False, True]
        >>> curve.diverged_at
        0.4
    """

    def __init__(self, smoothing: float, divergence_threshold: float, num_steps: int = 100) -> None:
        self.threshold = divergence_threshold
        self.ema = BiasCorrectedEMA(smoothing)
        self.check = DivergenceCheck(divergence_threshold, smoothing, num_steps)  # best counts after a warm-up
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stop_reason: Optional[str] = None
        self.diverged_at: Optional[float] = None

    def add(self, lr: float, step: int, value: float) -> bool:
        """Record one step's loss; True when the sweep must stop here."""
        self.losses.append(value)
        if not math.isfinite(value):
            self.smoothed.append(math.nan)
            self.stop_reason = f"the loss became {value} at lr={lr:.3g} (step {step})"
            self.diverged_at = lr
            return True
        s = self.ema.update(value)
        self.smoothed.append(s)
        if self.check.update(s):
            self.stop_reason = (
                f"the smoothed loss {s:.4g} exceeded {self.threshold:g} x the best {self.check.best:.4g}"
                f" at lr={lr:.3g} (step {step})"
            )
            self.diverged_at = lr
            return True
        return False


def _capture(trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> Snapshot:
    generators = []
    for dl in trainer.fit_loop._combined_loader.flattened:
        for owner in (dl, getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator):
                generators.append(gen)
    return Snapshot.capture(
        pl_module,
        [optimizer],
        schedulers=[c.scheduler for c in trainer.lr_scheduler_configs],
        scaler=getattr(trainer.precision_plugin, "scaler", None),
        generators=generators,
        fit_loop=trainer.fit_loop,
    )


@contextlib.contextmanager
def _isolated(trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> Any:
    """Other callbacks' hooks must not see the sweep, nor hooks on the optimizer's steps (a CyclicLearningRate
    already counting steps, a weight average), and ``self.log`` is a no-op during it."""
    saved_callbacks, saved_should_stop = trainer.callbacks, trainer.should_stop
    saved_log = {name: pl_module.__dict__.get(name) for name in ("log", "log_dict")}
    # torch (2.0+) keeps an optimizer's step hooks in these two ordered dicts.
    hooks = {name: getattr(optimizer, name) for name in _STEP_HOOKS if hasattr(optimizer, name)}
    trainer.callbacks = []
    pl_module.log = _noop  # type: ignore[method-assign]
    pl_module.log_dict = _noop  # type: ignore[method-assign]
    for name, value in hooks.items():
        setattr(optimizer, name, type(value)())
    try:
        yield
    finally:
        for name, value in hooks.items():
            setattr(optimizer, name, value)
        trainer.callbacks = saved_callbacks
        trainer.should_stop = saved_should_stop
        for name, value in saved_log.items():
            if value is None:
                pl_module.__dict__.pop(name, None)
            else:
                pl_module.__dict__[name] = value


def _set_lr(group: dict[str, Any], lr: float) -> None:
    """A tensor LR is written in place (the restore puts its value back into the same tensor); a float stays one."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def _progress_bar(trainer: pl.Trainer, config: RangeTestConfig, total: int, progress_bar: Optional[bool]) -> Any:
    from tqdm.auto import tqdm

    if progress_bar is None:
        progress_bar = trainer.progress_bar_callback is not None
    show = bool(config.progress_bar and progress_bar and trainer.is_global_zero)
    return tqdm(total=total, desc="LR range test", disable=not show, leave=False, dynamic_ncols=True)


def _reduce(trainer: pl.Trainer, local: torch.Tensor) -> tuple[float, bool]:
    """The loss averaged over ranks and whether any rank got SIGTERM, in one collective."""
    flag = torch.tensor(1.0 if trainer.received_sigterm else 0.0, device=local.device)
    both = trainer.strategy.reduce(torch.stack([local, flag]), reduce_op="mean")
    return float(both[0]), float(both[1]) > 0


def sweep(
    trainer: pl.Trainer, pl_module: pl.LightningModule, config: RangeTestConfig, progress_bar: Optional[bool] = None
) -> RangeTestResult:
    """Run the sweep (every rank), restore everything, and read the bounds off the curve."""
    optimizer = check_supported(trainer, pl_module)
    group_lrs = configured_lrs(optimizer)  # before any step: a group at lr <= 0 cannot be scaled
    scales = group_scales(group_lrs)
    lrs = sweep_lrs(config.min_lr, config.max_lr, config.num_steps, config.mode)
    metric = config.metric
    snapshot = _capture(trainer, pl_module, optimizer)
    batches = Batches(trainer, pl_module)
    skips = Skips(limit=config.num_steps)
    curve = Curve(config.smoothing, config.divergence_threshold, len(lrs))
    metric_values: list[float] = []
    feed_metric: FeedMetric = None
    if metric is not None:
        metric.to(pl_module.device)
        metric.reset()

        def feed_metric(output: Any, batch: Any) -> None:
            metric.update(*metric_inputs(output, batch, pl_module, trainer))

    bar = _progress_bar(trainer, config, len(lrs), progress_bar)
    try:
        with _isolated(trainer, pl_module, optimizer), sigterm_without_collectives(trainer), torch.enable_grad():
            for step, lr in enumerate(lrs):
                for group, scale in zip(optimizer.param_groups, scales):
                    _set_lr(group, lr * scale)
                local = one_step(trainer, pl_module, optimizer, batches, skips, step, feed_metric)
                value, sigterm = _reduce(trainer, local)
                if sigterm:
                    raise_sigterm(trainer, step)
                if metric is not None:
                    metric_values.append(float(metric.compute()))
                    metric.reset()
                bar.update(1)
                if curve.add(lr, step, value):
                    break
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{curve.smoothed[-1]:.4g}", refresh=False)
    finally:
        snapshot.restore()  # first: nothing below may leave the model with the sweep's weights
        bar.close()
        batches.close()
        if metric is not None:
            metric.reset()
    if batches.passes:
        rank_zero_info(
            f"LR range test: the train dataloader is shorter than the sweep; it was cycled {batches.passes} time(s)."
        )
    return _result(config, lrs[: len(curve.losses)], curve, metric_values, group_lrs, skips.total)


def _result(
    config: RangeTestConfig,
    lrs: list[float],
    curve: Curve,
    metric_values: list[float],
    group_lrs: list[float],
    skipped: int,
) -> RangeTestResult:
    metric = config.metric
    smoothed_metric: list[float] = []
    decision = curve.smoothed
    if metric is not None:
        smoothed_metric = _smooth_prefix(metric_values, curve.smoothed, config)
        sign = -1.0 if getattr(metric, "higher_is_better", None) is not False else 1.0
        decision = [sign * v for v in smoothed_metric]
    suggestions = suggest_all(
        lrs,
        decision,
        fallback_max_lr=max(group_lrs),  # the reference group's configured LR
        diverged_at=curve.diverged_at,
        base_divisor=config.base_divisor,
        raw=curve.losses if metric is None else None,  # the instability check reads raw losses, not a metric
    )
    chosen = suggestions[config.rule]
    if chosen.fallback:
        rank_zero_warn(f"LR range test: {chosen.reason}")
    return RangeTestResult(
        lrs=lrs,
        losses=curve.losses,
        smoothed_losses=curve.smoothed,
        base_lr=chosen.base_lr,
        max_lr=chosen.max_lr,
        rule=config.rule,
        stopped_early=curve.stop_reason is not None,
        stop_reason=curve.stop_reason,
        fallback=chosen.fallback,
        message=chosen.reason,
        metric_name=type(metric).__name__ if metric is not None else None,
        metric_values=metric_values,
        smoothed_metric=smoothed_metric,
        suggestions={k: [v.base_lr, v.max_lr] for k, v in suggestions.items()},
        config={k: getattr(config, k) for k in _CONFIG_KEYS},
        group_lrs=group_lrs,
        skipped_batches=skipped,
    )


def _smooth_prefix(values: list[float], smoothed_losses: list[float], config: RangeTestConfig) -> list[float]:
    """Smoothed metric, NaN where the loss was non-finite (those points are not read)."""
    ema = BiasCorrectedEMA(config.smoothing)
    out = []
    for v, s in zip(values, smoothed_losses):
        out.append(ema.update(v) if math.isfinite(s) and math.isfinite(v) else math.nan)
    return out
