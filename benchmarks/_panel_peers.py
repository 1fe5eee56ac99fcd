"""The optimizers and schedules of the benchmark panel's recipes (``benchmarks/panel.py``), the LR-free peers included.

Each peer at its authors' recommended settings (read from the installed packages' READMEs and source; written
down in docs/benchmarks.md):

- ``schedule_free``: Schedule-Free SGD (``schedulefree.SGDScheduleFree``) on SGD tasks, Schedule-Free AdamW on
  Adam/AdamW tasks. README: "For SGD, a learning rate 10x-50x larger than classical rates", so 10x the task's
  usual constant LR; for AdamW "1x-10x larger than with schedule-based approaches", so the code's default
  0.0025; "Using learning rate warmup is recommended" (``warmup_steps``: 5% of the run); momentum / betas at the
  code's defaults, the task's weight decay. ``optimizer.train()`` before every training step and
  ``optimizer.eval()`` before every evaluation (:func:`schedule_free_eval`), and with BatchNorm the README's fix:
  the running statistics recomputed at the averaged weights from 50 training batches before evaluating.
- ``prodigy``: ``prodigyopt.Prodigy(lr=1.0)`` (README: "We recommend using lr=1. (default) for all networks")
  with ``CosineAnnealingLR(T_max=total_steps)`` stepped per optimizer step (README: "cosine annealing ...
  T_max=total_steps"); ``safeguard_warmup`` stays off, as the README asks for it only with warm-up or restarts
  and this schedule has neither; the task's weight decay (decoupled, Prodigy's default). ``prodigy_bc``: the same
  with ``use_bias_correction=True`` (Adam's bias correction; the README advises it for diffusion models, off by
  default), which trained digits at batch 8 to 0.97 where the default stalled at 0.28-0.36 (d 0.039 against 0.027).
- ``one_cycle_valley``: ``OneCycleLR(max_lr=...)`` at fastai's ``valley`` suggestion (:func:`fastai_valley`),
  read off the same Lightning ``lr_find`` sweep as ``lr_find`` and ``one_cycle``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Optional

import torch
from torch import nn

SCHEDULE_FREE_WARMUP = 0.05  # of the run's steps
SCHEDULE_FREE_SGD_FACTOR = 10.0  # x the task's usual SGD LR (README: 10x-50x)
SCHEDULE_FREE_ADAMW_LR = 0.0025  # AdamWScheduleFree's default (README: 1x-10x the scheduled LR)
BN_BATCHES = 50  # the README's BatchNorm fix: itertools.islice(train_loader, 50)


def fastai_valley(lrs: list[float], losses: list[float], num_it: int = 100) -> Optional[float]:
    """fastai's ``valley`` suggestion (fastai/callback/schedule.py, ``valley`` and ``lr_find``), on a sweep's
    smoothed losses: drop the first ``num_it // 10`` points and everything from the first NaN on, find the longest
    (not necessarily contiguous) decreasing run, and take the point 1/3 + 1/6 = halfway along it."""
    lrs, losses = list(lrs[num_it // 10:]), list(losses[num_it // 10:])
    cut = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    lrs, losses = lrs[:cut], losses[:cut]
    n = len(losses)
    if n < 2:
        return None
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def _warmup_cosine(total: int) -> Any:
    warm = max(1, total // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor


def build_optimizer(task: Any, params: Any, lr: float, schedule: Optional[str], total_steps: int) -> Any:
    """What ``configure_optimizers`` returns for ``schedule`` (None: the task's optimizer at a constant ``lr``)."""
    if schedule == "schedule_free":
        import schedulefree

        warmup = max(1, round(SCHEDULE_FREE_WARMUP * total_steps))
        if task.optimizer == "sgd":
            return schedulefree.SGDScheduleFree(params, lr=SCHEDULE_FREE_SGD_FACTOR * task.default_lr, momentum=0.9,
                                                weight_decay=task.decay, warmup_steps=warmup)
        return schedulefree.AdamWScheduleFree(params, lr=SCHEDULE_FREE_ADAMW_LR, warmup_steps=warmup,
                                              weight_decay=task.decay)
    if schedule in ("prodigy", "prodigy_bc"):
        from prodigyopt import Prodigy

        opt: torch.optim.Optimizer = Prodigy(params, lr=1.0, weight_decay=task.decay, safeguard_warmup=False,
                                             use_bias_correction=schedule == "prodigy_bc")
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    if task.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=task.decay)
    elif task.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=task.decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=task.decay)
    if schedule is None:
        return opt
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    elif schedule == "warmup_cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(total_steps))
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def is_schedule_free(optimizer: Any) -> bool:
    return hasattr(optimizer, "train") and hasattr(optimizer, "eval") and "train_mode" in optimizer.param_groups[0]


@torch.no_grad()
def schedule_free_eval(net: nn.Module, optimizer: Any, train: tuple[torch.Tensor, torch.Tensor], batch_size: int,
                       seed: int) -> None:
    """``optimizer.eval()`` (the weights become the average x), and with BatchNorm the README's fix: forward
    ``BN_BATCHES`` training batches in train mode so the running statistics are those of x, not of y. Its own
    sampler generator: the training data order is not touched."""
    optimizer.eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return
    was = net.training
    net.train()
    x, _ = train
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000 + seed))
    starts = range(0, len(x), batch_size)
    for k in itertools.islice(starts, BN_BATCHES):
        net(x[order[k: k + batch_size]])
    net.train(was)
