"""The divergence guard's part of ``overhead.py``: its per-call costs, and its lines of the Markdown table."""

from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl
import torch
from _common import make_trainer

from lightning_clr import CyclicLearningRate, DivergenceGuard

__all__ = ["guard_calls", "guard_lines"]


def guard_calls(model: pl.LightningModule, loader: Any) -> dict[str, Callable[[], Any]]:
    """The guard's work: its per-batch path (the callback's ``on_train_batch_end`` between checks) and one check
    of ``check_every`` losses (appending them, one read, the rule), on a guard wired up by a real fit."""
    clr = CyclicLearningRate(base_lr=1e-3, max_lr=6e-3, step_size_up=2000, guard=DivergenceGuard(enabled=True))
    trainer = make_trainer([clr], max_epochs=1, max_steps=4)
    trainer.fit(model, train_dataloaders=loader)
    guard, every = clr._guard, clr.settings.guard.check_every
    outputs = {"loss": torch.tensor(1.3)}
    guard._next_check = 10**12  # between checks

    def batch_end() -> None:
        clr.on_train_batch_end(trainer, model, outputs, None, 0)
        if len(guard._losses) > 1000:
            guard._losses.clear()

    def check() -> None:
        guard._losses.clear()
        for _ in range(every):
            guard._losses.append(outputs["loss"])
        guard.decide(10**12)

    return {"guard_batch_end": batch_end, "guard_check": check}


def guard_lines(s: dict[str, Any], f: dict[str, Any]) -> list[str]:
    pw, pc = f["paired_wall_ratio_guard_vs_callback"], f["paired_cpu_ratio_guard_vs_callback"]
    per_step = s["guard_batch_end"]["median_us"] + s["guard_check"]["median_us"] / 10
    fit_per_step = f["median_cpu_s"]["callback"] / f["optimizer_steps"] * 1e6
    return [
        "",
        f"The divergence guard, on a fit where it never acts: its per-batch path (keep the step's loss tensor) costs"
        f" {s['guard_batch_end']['median_us']:.2f} µs, and one check of 10 losses (append them, one read, the rule)"
        f" {s['guard_check']['median_us']:.1f} µs (min {s['guard_check']['min_us']:.1f}: a block of these is 10x"
        f" longer than one of the per-batch path, and more often preempted on a loaded machine), i.e."
        f" {s['guard_check']['median_us'] / 10:.2f} µs per step at"
        f" the default `check_every=10`. Whole fits, guard on against guard off, paired ({pw['rounds']} rounds):"
        f" wall {pw['median']:.4f} (quartiles {pw['q1']:.4f}–{pw['q3']:.4f}), CPU {pc['median']:.4f}"
        f" (quartiles {pc['q1']:.4f}–{pc['q3']:.4f}). Bottom-up: {per_step:.2f} µs per step against"
        f" {fit_per_step:.0f} µs of CPU per step for the guard-off fit: **{1 + per_step / fit_per_step:.4f}**.",
        f"- [{'x' if pc['median'] <= 1.01 else ' '}] guard on vs off, whole-fit CPU-time ratio, paired, <= 1.01"
        f" ({pc['median']:.4f})",
        f"- [{'x' if per_step / fit_per_step <= 0.01 else ' '}] guard on vs off, bottom-up, <= 1.01"
        f" ({1 + per_step / fit_per_step:.4f})",
    ]
