"""GPU check of the per-step writer (issue 20): what only a CUDA device can show, ready to run.

Each part runs a real ``Trainer`` fit of a small MLP:

1. ``fused_amp``: fused AdamW with a tensor LR under ``16-mixed`` (GradScaler), inf losses forced at two steps
   (one of them the last). Each ``optimizer.step()`` (the callback's step hooks included) runs under
   ``torch.cuda.set_sync_debug_mode("error")``: a host-device sync in it raises. The skipped steps must not be
   counted (the count is read after the fit, when the last flag has landed).
2. ``compiled``: a tensor LR and tensor betas, ``torch.compile`` of a function calling ``opt.step()`` (torch's
   recipe "compiling_optimizer_lr_scheduler"), the range test and a few cycles in ``bf16-mixed``. Counts the
   recompiles after the first compile (dynamo's guard failures): 0 expected.
3. ``overhead``: whole-fit time per optimizer step with the callback against an empty ``Callback`` (fused AdamW,
   tensor LR on the device), in rotating order, and the step hooks' own cost per call.

On a machine without CUDA, ``--quick`` is a dry run: the sync check is skipped (it needs CUDA; said in the
output), the rest runs on the CPU, and the compile uses dynamo's ``eager`` backend (same guards and recompiles,
no inductor build). The exit status is 1 when a check fails.

Usage:
    python benchmarks/gpu_check.py --quick                   # on a CUDA machine, about 2 minutes
    python benchmarks/gpu_check.py                           # more steps and repeats
    python benchmarks/gpu_check.py --quick --out-dir /tmp/x  # on CPU: the dry run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine_info, quiet_lightning, results_dir, write_json  # noqa: E402

from lightning_clr import CyclicLearningRate, RangeTestConfig  # noqa: E402


class Net(pl.LightningModule):
    """An MLP whose optimizer is AdamW with a tensor LR on the model's device (fused, or compiled)."""

    def __init__(self, fused: bool = True, compiled: Optional[str] = None, inf_at: tuple[int, ...] = (),
                 width: int = 256) -> None:
        super().__init__()
        self.fused, self.compiled, self.inf_at = fused, compiled, inf_at
        self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        return loss * float("inf") if batch_idx in self.inf_at else loss

    def configure_optimizers(self) -> Any:
        lr = torch.tensor(1e-3, device=self.device)
        if self.compiled is None:
            return torch.optim.AdamW(self.parameters(), lr=lr, fused=self.fused)
        betas = (torch.tensor(0.9, device=self.device), torch.tensor(0.999, device=self.device))
        opt = torch.optim.AdamW(self.parameters(), lr=lr, betas=betas)

        def step() -> None:
            opt.step()

        self.step_fn = torch.compile(step, backend=self.compiled)
        return opt

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        if self.compiled is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer_closure()
        self.step_fn()


def data(steps: int, batch_size: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch_size, 64, generator=g)
    y = (x @ torch.randn(64, 10, generator=g)).argmax(dim=1)  # a learnable task: the range test has a curve to read
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def make(callbacks: list[Callback], epochs: int = 1, **kwargs: Any) -> pl.Trainer:
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    return pl.Trainer(accelerator=accelerator, devices=1, max_epochs=epochs, callbacks=callbacks, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


@contextlib.contextmanager
def syncs_raise_in_steps(cuda: bool) -> Iterator[list[str]]:
    """Under CUDA, every ``optimizer.step()`` (its hooks included) runs with ``set_sync_debug_mode("error")``;
    the global pre-hook runs before the optimizer's own hooks and the global post-hook after them."""
    kinds: list[str] = []

    def pre(optimizer: Any, args: Any, kwargs: Any) -> None:
        kinds.append(type(getattr(optimizer, "found_inf", None)).__name__)
        if cuda:
            torch.cuda.set_sync_debug_mode("error")

    def post(optimizer: Any, args: Any, kwargs: Any) -> None:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        yield kinds
    finally:
        for h in handles:
            h.remove()
        if cuda:
            torch.cuda.set_sync_debug_mode(0)


def check_fused_amp(cuda: bool, steps: int) -> dict[str, Any]:
    device = "cuda" if cuda else "cpu"
    clr = CyclicLearningRate(base_lr=1e-4, max_lr=1e-3, step_size_up=max(2, steps // 6))
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    trainer = make([clr], plugins=[MixedPrecision("16-mixed", device, scaler=scaler)])
    with syncs_raise_in_steps(cuda) as kinds:
        trainer.fit(Net(fused=True, inf_at=(steps // 2, steps - 1)), data(steps))
    skipped = round(torch.log2(torch.tensor(2.0**10) / scaler.get_scale()).item())
    counted = clr.steps[0]  # reads the last step's flag (after the fit: a wait is fine here)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    return {"steps": trainer.global_step, "skipped": skipped, "counted": counted,
            "found_inf": sorted(set(kinds)), "lr_is_tensor": isinstance(lr, torch.Tensor),
            "sync_checked": cuda, "ok": skipped == 2 and counted == trainer.global_step - 2
            and isinstance(lr, torch.Tensor) and "Tensor" in kinds}


def check_compiled(cuda: bool, steps: int, backend: str) -> dict[str, Any]:
    import torch._dynamo
    from torch._dynamo.utils import counters, guard_failures

    config = RangeTestConfig(num_steps=20, min_lr=1e-5, max_lr=1.0, save=False, progress_bar=False)
    clr = CyclicLearningRate(step_size_up=max(2, steps // 8), cycle_momentum=True, range_test=config)
    model = Net(compiled=backend)
    torch._dynamo.reset()
    try:
        trainer = make([clr], epochs=2, precision="bf16-mixed")
        trainer.fit(model, data(steps))
        recompiles = {getattr(code, "co_name", str(code)): [r[:300] for r in reasons]
                      for code, reasons in guard_failures.items()}
        graphs = int(counters["stats"]["unique_graphs"])
    finally:
        torch._dynamo.reset()
    group = trainer.optimizers[0].param_groups[0]
    result = clr.range_test_result
    return {"backend": backend, "steps": trainer.global_step, "counted": clr.steps[0], "graphs": graphs,
            "recompiles": recompiles, "cycles": trainer.global_step / (2 * clr.plan.step_size_up),  # type: ignore
            "range_test": None if result is None else [result.base_lr, result.max_lr, len(result.lrs)],
            "ok": not recompiles and clr.steps[0] == trainer.global_step and isinstance(group["lr"], torch.Tensor)
            and isinstance(group["betas"][0], torch.Tensor)}


class EmptyCallback(Callback):
    """No hooks of its own: the baseline for the callback's cost."""


def timed_fit(callback: Callback, steps: int, cuda: bool) -> float:
    trainer = make([callback])
    model, loader = Net(fused=True), data(steps)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.fit(model, loader)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def per_call_us(fn: Callable[[], Any], calls: int = 200, blocks: int = 21) -> float:
    samples = []
    for _ in range(blocks):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t0) / calls / 1e3)
    return statistics.median(samples)


def check_overhead(cuda: bool, steps: int, repeats: int) -> dict[str, Any]:
    kinds: dict[str, Callable[[], Callback]] = {
        "empty_callback": EmptyCallback,
        "callback": lambda: CyclicLearningRate(base_lr=1e-4, max_lr=1e-3, step_size_up=max(2, steps // 4)),
    }
    for make_callback in kinds.values():  # warm-up fits, not counted
        timed_fit(make_callback(), steps, cuda)
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(repeats):
        for j in range(len(kinds)):
            kind = list(kinds)[(j + r) % len(kinds)]
            wall[kind].append(timed_fit(kinds[kind](), steps, cuda))
    med = {k: statistics.median(v) for k, v in wall.items()}
    clr = CyclicLearningRate(base_lr=1e-4, max_lr=1e-3, step_size_up=steps)
    trainer = make([clr], max_steps=2)
    trainer.fit(Net(fused=True), data(2))
    opt, arm, stepped = trainer.optimizers[0], clr._writer._arm(0), clr._writer._stepped(0)  # type: ignore

    def hooks() -> None:
        arm(opt, (), {})
        stepped(opt, (), {})

    return {"steps": steps, "repeats": repeats, "median_wall_s": med, "wall_s": wall,
            "per_step_vs_empty_callback_us": (med["callback"] - med["empty_callback"]) / steps * 1e6,
            "ratio_vs_empty_callback": med["callback"] / med["empty_callback"],
            "hooks_per_step_us": per_call_us(hooks), "ok": True}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    backend = args.backend or ("inductor" if cuda else "eager")
    steps = 24 if args.quick else 200
    timing = (steps * 8, 5) if cuda else (steps, 1)  # on the CPU the timing only runs the code: 1 repeat
    if not args.quick:
        timing = (1000, 11)
    out: dict[str, Any] = {"cuda": cuda, "device": torch.cuda.get_device_name() if cuda else "cpu",
                           "quick": args.quick, "machine": machine_info(), "checks": {}, "errors": {}, "skipped": []}
    if not cuda:
        out["skipped"].append("sync check: torch.cuda.set_sync_debug_mode needs CUDA; fused_amp only checks the"
                              " count on the CPU (a CPU GradScaler, CPU tensors)")
        out["skipped"].append(f"compile with dynamo's {backend!r} backend (inductor on a GPU)")
        out["skipped"].append("overhead figures on the CPU are not the GPU's; see docs/benchmarks.md")
    parts = {"fused_amp": lambda: check_fused_amp(cuda, steps),
             "compiled": lambda: check_compiled(cuda, steps, backend),
             "overhead": lambda: check_overhead(cuda, *timing)}
    for name, part in parts.items():
        if args.only and name not in args.only:
            continue
        print(f"gpu_check: {name} ...", flush=True)
        try:
            out["checks"][name] = part()
        except Exception as err:  # one failing part must not hide the others' results
            out["errors"][name] = "".join(traceback.format_exception(err))[-4000:]
    out["ok"] = not out["errors"] and all(c.get("ok") for c in out["checks"].values())
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps and repeats (a GPU check of minutes)")
    p.add_argument("--out-dir", default=None, help="where gpu_check[_quick].json goes (default benchmarks/results)")
    p.add_argument("--backend", default=None, help="torch.compile backend (default: inductor on CUDA, else eager)")
    p.add_argument("--only", nargs="*", choices=["fused_amp", "compiled", "overhead"], help="run these parts only")
    args = p.parse_args(argv)
    quiet_lightning()
    out = run(args)
    path = results_dir(None, args.out_dir) / ("gpu_check_quick.json" if args.quick else "gpu_check.json")
    write_json(path, out)
    for name, check in out["checks"].items():
        print(f"{name}: {json.dumps({k: v for k, v in check.items() if k != 'wall_s'})}")
    for name, error in out["errors"].items():
        print(f"{name} FAILED:\n{error}")
    for line in out["skipped"]:
        print(f"skipped: {line}")
    print(f"{'ok' if out['ok'] else 'FAILED'}; wrote {path}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
