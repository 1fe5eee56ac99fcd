"""Overhead of the ``CyclicLearningRate`` callback, in one process.

1. Per optimizer step, in microseconds (median of blocks of calls):
   - the callback's writer, ``ScheduleWriter.apply(i)``: computing and writing LR and momentum into the param groups;
   - the callback's path per step: the step hook it registers on the optimizer (torch calls it after every
     ``optimizer.step()``), which counts the step and writes the next LR;
   - ``torch.optim.lr_scheduler.CyclicLR.step()`` on the same kind of optimizer (SGD with momentum,
     momentum cycling on in both), which is what a per-step scheduler costs.
2. Whole ``trainer.fit`` wall and CPU time of a tiny MLP: the callback (explicit bounds: no range test), a
   constant LR, an empty ``Callback`` and torch's ``CyclicLR`` stepped by Lightning, in rotating order; ratios of
   medians and paired per-round ratios.
3. The callback's own work in a fit, bottom-up: its once-per-fit hooks timed inside real fits, plus its step
   hook's cost times the steps, against an empty callback's whole fit.
4. The divergence guard (``DivergenceGuard(enabled=True)`` on explicit bounds, on a fit where it never acts):
   its per-batch path (keep the step's loss tensor) and its check (read ``check_every`` losses, judge them), and
   whole fits with the guard on against the same callback with the guard off (paired ratios; target <= 1.01).
5. With ``--instructions``: CPU instructions inside ``trainer.fit`` for each kind, under valgrind's callgrind
   (not disturbed by other jobs on the machine; the region is switched from outside, so counts still vary
   by about 0.5% between runs).

Targets: per-step cost <= CyclicLR.step(); the callback's fit <= 1.005x an empty Callback's (issue 12);
whole-fit ratio to the constant LR <= 1.01.

Usage:
    python benchmarks/overhead.py                  # ~5 min
    python benchmarks/overhead.py --instructions   # ~8 min, needs valgrind
    python benchmarks/overhead.py --quick --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import (  # noqa: E402
    DOCS_DIR,
    TensorBatches,
    machine_info,
    make_trainer,
    quiet_lightning,
    results_dir,
    update_section,
    write_json,
)
from _guard_cost import guard_calls, guard_lines  # noqa: E402

from lightning_clr import CyclicLearningRate, DivergenceGuard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class TinyMLP(pl.LightningModule):
    def __init__(self, lr: float = 0.01, cyclic: bool = False) -> None:
        super().__init__()
        self.cyclic = cyclic
        self.net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if not self.cyclic:
            return opt
        sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-3, max_lr=6e-3, step_size_up=2000)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def tiny_loader(n: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    ds = TensorBatches(x, y)
    return DataLoader(ds, sampler=torch.utils.data.BatchSampler(range(n), batch_size, False), batch_size=None)


def per_call_us(fns: dict[str, Callable[[], Any]], calls: int, blocks: int) -> dict[str, dict[str, float]]:
    """Per function: median (and min, max) over ``blocks`` of the mean time of ``calls`` back-to-back calls, in µs.

    The functions take turns block by block, so load from other processes hits them alike; blocks are short,
    so a block that the OS preempted is an outlier that the median ignores.
    """
    for fn in fns.values():  # warm up
        for _ in range(200):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter_ns() - t0) / calls / 1e3)
    return {name: {"median_us": statistics.median(v), "min_us": min(v), "max_us": max(v)}
            for name, v in samples.items()}


def per_step_costs(calls: int, blocks: int) -> dict[str, Any]:
    # A real fit of a few steps wires the callback up (optimizer, param groups, bounds, cycle length).
    model = TinyMLP()
    clr = CyclicLearningRate(base_lr=1e-3, max_lr=6e-3, step_size_up=2000, cycle_momentum=True)  # as CyclicLR
    trainer = make_trainer([clr], max_epochs=1, max_steps=4)
    trainer.fit(model, train_dataloaders=tiny_loader(128, 32))
    opt = trainer.optimizers[0]
    # what the optimizer calls around each of its steps (torch's step pre- and post-hook)
    arm, stepped = clr._writer._arm(0), clr._writer._stepped(0)

    def hooks() -> None:
        arm(opt, (), {})
        stepped(opt, (), {})

    ref_model = TinyMLP()
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(ref_opt, base_lr=1e-3, max_lr=6e-3, step_size_up=2000)
    ref_opt.step()  # avoid torch's "scheduler.step() before optimizer.step()" warning
    costs: dict[str, Any] = per_call_us(
        {"callback_apply": lambda: clr._writer.apply(0), "callback_hooks": hooks, "torch_cycliclr_step": sched.step,
         **guard_calls(model, tiny_loader(128, 32))}, calls, blocks)
    return {**costs, "calls_per_block": calls, "blocks": blocks}


KINDS = ("constant", "callback", "empty_callback", "torch_cycliclr", "callback_guard")


class EmptyCallback(Callback):
    """A callback with no hooks of its own: what Lightning's dispatch of callback hooks costs by itself."""


def fit_steps(epochs: int, n: int, batch_size: int) -> int:
    """Optimizer steps of a whole fit of ``epochs`` over ``n`` rows."""
    return epochs * ((n + batch_size - 1) // batch_size)


def build_fit(kind: str, epochs: int, clr_class: type = CyclicLearningRate) -> tuple[pl.Trainer, TinyMLP]:
    """The trainer and model of one whole-fit ``kind`` (see ``KINDS``); ``clr_class`` builds the callback."""
    pl.seed_everything(0, verbose=False)
    model = TinyMLP(cyclic=kind == "torch_cycliclr")
    callbacks: list[Callback] = []
    if kind == "callback":
        callbacks = [clr_class(base_lr=1e-3, max_lr=6e-3)]
    elif kind == "callback_guard":  # the guard on, on a fit where it never acts
        callbacks = [clr_class(base_lr=1e-3, max_lr=6e-3, guard=DivergenceGuard(enabled=True))]
    elif kind == "empty_callback":
        callbacks = [EmptyCallback()]
    return make_trainer(callbacks, max_epochs=epochs), model


def callgrind_worker(kind: str, epochs: int, n: int, batch_size: int) -> None:
    """Run under ``valgrind --tool=callgrind --instr-atstart=no``: instructions are counted inside ``trainer.fit``
    alone (imports and set-up are not instrumented)."""
    import subprocess

    loader = tiny_loader(n, batch_size)
    trainer, model = build_fit(kind, epochs)
    toggle = ["callgrind_control", "-i"]
    subprocess.run([*toggle, "on", str(os.getpid())], check=True, capture_output=True)
    trainer.fit(model, train_dataloaders=loader)
    subprocess.run([*toggle, "off", str(os.getpid())], check=True, capture_output=True)


def instructions(epochs: int, n: int, batch_size: int) -> dict[str, Any]:
    """CPU instructions executed inside ``trainer.fit`` per kind, counted by callgrind: repeatable where wall and
    CPU time are not (on a shared VM, one fit's time varies by +-15% from one run to the next). Two kinds at a
    time, one process each."""
    import re
    import subprocess

    env = dict(os.environ, PYTHONHASHSEED="0")
    procs = {}
    counts: dict[str, int] = {}
    for batch in (KINDS[:2], KINDS[2:]):
        for kind in batch:
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
                   sys.executable, __file__, "--callgrind-worker", kind, "--epochs", str(epochs), "--n", str(n),
                   "--batch-size", str(batch_size)]
            procs[kind] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for kind in batch:
            err = procs[kind].communicate()[1]
            found = re.search(r"Collected : (\d+)", err)
            if procs[kind].returncode != 0 or not found:
                raise RuntimeError(f"callgrind run of {kind!r} failed: {err[-2000:]}")
            counts[kind] = int(found.group(1))
    steps = fit_steps(epochs, n, batch_size)
    return {"epochs": epochs, "optimizer_steps": steps, "instructions": counts,
            "ratios": {k: counts[k] / counts["constant"] for k in KINDS},
            "callback_vs_empty_callback": counts["callback"] / counts["empty_callback"],
            "guard_vs_callback": counts["callback_guard"] / counts["callback"],
            "per_step": {k: counts[k] / steps for k in KINDS}}


class TimedCyclicLearningRate(CyclicLearningRate):
    """The callback, with the time of its once-per-fit hooks summed (its per-step work is the step hook, timed
    apart by :func:`per_step_costs`)."""

    seconds = 0.0

    def _timed(self, hook: str, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        getattr(super(), hook)(*args, **kwargs)
        TimedCyclicLearningRate.seconds += time.perf_counter() - t0

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._timed("setup", *args, **kwargs)

    def on_fit_start(self, *args: Any, **kwargs: Any) -> None:
        self._timed("on_fit_start", *args, **kwargs)

    def on_train_start(self, *args: Any, **kwargs: Any) -> None:
        self._timed("on_train_start", *args, **kwargs)

    def on_train_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        self._timed("on_train_epoch_start", *args, **kwargs)

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        self._timed("teardown", *args, **kwargs)


def own_cost(repeats: int, epochs: int, n: int, batch_size: int, step_hook_us: float) -> dict[str, Any]:
    """The callback's own work in a fit, bottom-up: its once-per-fit hooks (timed inside real fits, median of
    ``repeats``) plus its step hook's per-call cost times the steps; against an empty callback's whole fit."""
    loader = tiny_loader(n, batch_size)
    per_fit, empty = [], []
    for _ in range(repeats):
        TimedCyclicLearningRate.seconds = 0.0
        trainer, model = build_fit("callback", epochs, TimedCyclicLearningRate)
        trainer.fit(model, train_dataloaders=loader)
        per_fit.append(TimedCyclicLearningRate.seconds)
        trainer, model = build_fit("empty_callback", epochs)
        t0 = time.perf_counter()
        trainer.fit(model, train_dataloaders=loader)
        empty.append(time.perf_counter() - t0)
    steps = fit_steps(epochs, n, batch_size)
    fixed, fit = statistics.median(per_fit), statistics.median(empty)
    own = fixed + steps * step_hook_us * 1e-6
    return {"once_per_fit_s": fixed, "step_hook_us": step_hook_us, "optimizer_steps": steps, "own_s": own,
            "empty_callback_fit_s": fit, "ratio": 1 + own / fit}


def whole_fit(repeats: int, epochs: int, n: int, batch_size: int) -> dict[str, Any]:
    """Fit the tiny MLP with a constant LR, with the callback, with an empty callback and with torch's CyclicLR
    (``interval="step"``); the kinds take turns in a rotating order."""
    loader = tiny_loader(n, batch_size)
    wall: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}

    def one(kind: str) -> tuple[float, float]:
        trainer, model = build_fit(kind, epochs)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.fit(model, train_dataloaders=loader)
        return time.perf_counter() - t0, time.process_time() - c0

    for kind in KINDS:  # warm-up fits (imports, first-call costs); not counted
        one(kind)
    for k in range(repeats):
        for j in range(len(KINDS)):
            kind = KINDS[(j + k) % len(KINDS)]
            w, c = one(kind)
            wall[kind].append(w)
            cpu[kind].append(c)
    steps = fit_steps(epochs, n, batch_size)
    med = {kind: statistics.median(v) for kind, v in wall.items()}
    med_cpu = {kind: statistics.median(v) for kind, v in cpu.items()}
    return {
        "repeats": repeats, "epochs": epochs, "optimizer_steps": steps, "batch_size": batch_size,
        "wall_s": wall, "cpu_s": cpu, "median_wall_s": med, "median_cpu_s": med_cpu,
        "ratio": med["callback"] / med["constant"],
        "cpu_ratio": med_cpu["callback"] / med_cpu["constant"],
        "ratios_wall": {kind: med[kind] / med["constant"] for kind in KINDS},
        "ratios_cpu": {kind: med_cpu[kind] / med_cpu["constant"] for kind in KINDS},
        "per_step_difference_us": (med["callback"] - med["constant"]) / steps * 1e6,
        "cpu_ratio_vs_empty_callback": med_cpu["callback"] / med_cpu["empty_callback"],
        "wall_ratio_vs_empty_callback": med["callback"] / med["empty_callback"],
        "cpu_per_step_vs_empty_callback_us": (med_cpu["callback"] - med_cpu["empty_callback"]) / steps * 1e6,
        "cpu_per_step_empty_callback_us": (med_cpu["empty_callback"] - med_cpu["constant"]) / steps * 1e6,
        "constant_per_step_us": med["constant"] / steps * 1e6,
        # Each round runs every kind once, back to back: the ratio within a round cancels the machine's drift.
        "paired_wall_ratio_vs_empty_callback": _paired(wall["callback"], wall["empty_callback"]),
        "paired_cpu_ratio_vs_empty_callback": _paired(cpu["callback"], cpu["empty_callback"]),
        "paired_wall_ratio_guard_vs_callback": _paired(wall["callback_guard"], wall["callback"]),
        "paired_cpu_ratio_guard_vs_callback": _paired(cpu["callback_guard"], cpu["callback"]),
    }


def _paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round ratios ``a[k] / b[k]``."""
    ratios = sorted(x / y for x, y in zip(a, b))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2], "rounds": len(ratios)}


LABELS = {"constant": "constant LR", "callback": "`CyclicLearningRate` (explicit bounds)",
          "empty_callback": "an empty `Callback` (Lightning's hook dispatch alone)",
          "torch_cycliclr": "torch `CyclicLR`, `interval=\"step\"`",
          "callback_guard": "`CyclicLearningRate` (explicit bounds) with `DivergenceGuard(enabled=True)`, never acting"}


def markdown(data: dict[str, Any]) -> str:
    m, s, f = data["machine"], data["per_step"], data["whole_fit"]

    def cell(d: dict[str, float]) -> str:
        return f"{d['median_us']:.2f} [{d['min_us']:.2f}–{d['max_us']:.2f}]"

    pw, pc = f["paired_wall_ratio_vs_empty_callback"], f["paired_cpu_ratio_vs_empty_callback"]
    ok_step = s["callback_hooks"]["median_us"] <= s["torch_cycliclr_step"]["median_us"]
    ok_fit = f["ratio"] <= 1.01
    ok_cpu = f["cpu_ratio"] <= 1.01
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores shared with other jobs (noisy), {m['torch_threads']} torch "
        f"thread(s); torch {m['torch']}, lightning {m['lightning']}, python {m['python']}. "
        f"Command: `{data['command']}`.",
        "",
        f"Per optimizer step (median [min–max] of {s['blocks']} blocks of {s['calls_per_block']} calls):",
        "",
        "| what | µs per step |",
        "|---|---|",
        f"| the callback's writer, `ScheduleWriter.apply` (LR + momentum into the param group) |"
        f" {cell(s['callback_apply'])} |",
        f"| the callback's per-step path: its optimizer step pre- and post-hook (arm, count the step, then `apply`) |"
        f" {cell(s['callback_hooks'])} |",
        f"| `torch.optim.lr_scheduler.CyclicLR.step()` | {cell(s['torch_cycliclr_step'])} |",
        "",
        f"Whole `trainer.fit` of a tiny MLP ({f['optimizer_steps']} optimizer steps, batch {f['batch_size']}, "
        f"{f['repeats']} repeats of each kind in rotating order; medians, ratio to the constant LR):",
        "",
        "| fit | wall s | wall ratio | CPU s | CPU ratio |",
        "|---|---|---|---|---|",
        *[f"| {LABELS[k]} | {f['median_wall_s'][k]:.3f} | {f['ratios_wall'][k]:.4f} | {f['median_cpu_s'][k]:.3f} | "
          f"{f['ratios_cpu'][k]:.4f} |" for k in KINDS],
        "",
        f"The callback's fit differs from the constant LR's by {f['per_step_difference_us']:+.1f} µs per step "
        f"(wall), against {f['constant_per_step_us']:.0f} µs per step for the whole loop. CPU time is what other "
        "jobs on the shared machine disturb least. In CPU time, Lightning's dispatch of its per-step hooks to ANY "
        f"callback (the empty one) costs {f['cpu_per_step_empty_callback_us']:+.1f} µs per step; the callback "
        f"costs {f['cpu_per_step_vs_empty_callback_us']:+.1f} µs per step more than that (CPU ratio to the empty "
        f"callback: {f['cpu_ratio_vs_empty_callback']:.4f}).",
        "",
        "",
        f"Paired, round by round ({pw['rounds']} rounds, each running every kind once back to back), the callback's"
        f" fit against the empty callback's: wall {pw['median']:.4f} (quartiles {pw['q1']:.4f}–{pw['q3']:.4f}),"
        f" CPU {pc['median']:.4f} (quartiles {pc['q1']:.4f}–{pc['q3']:.4f}).",
        *guard_lines(s, f),
        *_own_cost_lines(data.get("own_cost")),
        *_instruction_lines(data.get("instructions")),
        "",
        f"- [{'x' if ok_step else ' '}] per-step cost of the callback's hooks <= torch CyclicLR.step()",
        f"- [{'x' if pc['median'] <= 1.005 else ' '}] whole-fit CPU-time ratio to an empty Callback, paired,"
        f" <= 1.005 ({pc['median']:.4f}; ratio of medians {f['cpu_ratio_vs_empty_callback']:.4f})",
        f"- [{'x' if pw['median'] <= 1.005 else ' '}] whole-fit wall-time ratio to an empty Callback, paired,"
        f" <= 1.005 ({pw['median']:.4f}; ratio of medians {f['wall_ratio_vs_empty_callback']:.4f})",
        f"- [{'x' if ok_fit else ' '}] whole-fit wall-time ratio <= 1.01",
        f"- [{'x' if ok_cpu else ' '}] whole-fit CPU-time ratio <= 1.01",
    ]
    return "\n".join(lines) + "\n"


def _own_cost_lines(own: Optional[dict[str, Any]]) -> list[str]:
    if not own:
        return []
    return [
        "",
        f"The callback's own work, bottom-up: its once-per-fit hooks took {own['once_per_fit_s'] * 1e3:.2f} ms per fit"
        f" (median of fits timed from inside), and its step hook {own['step_hook_us']:.2f} µs x"
        f" {own['optimizer_steps']} steps; {own['own_s'] * 1e3:.2f} ms in all against"
        f" {own['empty_callback_fit_s']:.3f} s for an empty callback's whole fit: **{own['ratio']:.4f}**.",
        f"- [{'x' if own['ratio'] <= 1.005 else ' '}] the callback's own work, bottom-up, <= 0.5% of an empty"
        f" Callback's fit ({own['ratio']:.4f})",
    ]


def _instruction_lines(ins: Optional[dict[str, Any]]) -> list[str]:
    if not ins:
        return []
    c = ins["instructions"]
    return [
        "",
        f"CPU instructions inside `trainer.fit` ({ins['optimizer_steps']} optimizer steps, callgrind, one process per"
        " kind, imports and set-up not counted; repeatable where time is not):",
        "",
        "| fit | instructions | per step | ratio to the constant LR |",
        "|---|---|---|---|",
        *[f"| {LABELS[k]} | {c[k]:,} | {ins['per_step'][k]:,.0f} | {ins['ratios'][k]:.4f} |" for k in KINDS],
        "",
        f"The callback's fit against the empty callback's: **{ins['callback_vs_empty_callback']:.4f}** in instructions"
        f" ({(c['callback'] - c['empty_callback']) / ins['optimizer_steps']:,.0f} instructions per step more).",
        f"The guard on against off: **{ins['guard_vs_callback']:.4f}** in instructions"
        f" ({(c['callback_guard'] - c['callback']) / ins['optimizer_steps']:,.0f} instructions per step more).",
        f"- [{'x' if ins['guard_vs_callback'] <= 1.01 else ' '}] guard on vs off, whole-fit instruction ratio <= 1.01"
        f" ({ins['guard_vs_callback']:.4f})",
        f"- [{'x' if ins['callback_vs_empty_callback'] <= 1.005 else ' '}] whole-fit instruction ratio to an empty"
        f" Callback <= 1.005 ({ins['callback_vs_empty_callback']:.4f})",
    ]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few repetitions: a smoke run of seconds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=None, help="the Markdown table (default: docs/benchmarks)")
    p.add_argument("--results-dir", default=None, help="raw results JSON (default: benchmarks/results, or --out-dir "
                   "when given)")
    p.add_argument("--doc", default=None, help="Markdown file whose 'overhead' section is updated "
                                                "(default: docs/benchmarks.md for a full run into docs/benchmarks)")
    p.add_argument("--instructions", action="store_true", help="also count each fit's CPU instructions with "
                   "valgrind's callgrind (minutes; needs valgrind)")
    p.add_argument("--callgrind-worker", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=4096, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    if args.callgrind_worker:
        callgrind_worker(args.callgrind_worker, args.epochs, args.n, args.batch_size)
        return 0
    out_dir = Path(args.out_dir) if args.out_dir is not None else DOCS_DIR
    raw_dir = results_dir(args.results_dir, args.out_dir)
    data: dict[str, Any] = {
        "command": "python benchmarks/overhead.py" + ("" if not (argv or sys.argv[1:]) else
                                                     " " + " ".join(argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(),
    }
    if args.quick:
        data["per_step"] = per_step_costs(calls=100, blocks=11)
        data["whole_fit"] = whole_fit(repeats=2, epochs=1, n=256, batch_size=16)
    else:
        data["per_step"] = per_step_costs(calls=100, blocks=501)
        data["whole_fit"] = whole_fit(repeats=41, epochs=5, n=4096, batch_size=32)
    data["own_cost"] = own_cost(repeats=3 if args.quick else 11, epochs=1 if args.quick else 5,
                                n=256 if args.quick else 4096, batch_size=16 if args.quick else 32,
                                step_hook_us=data["per_step"]["callback_hooks"]["median_us"])
    if args.instructions:
        data["instructions"] = instructions(epochs=1 if args.quick else 5, n=args.n, batch_size=args.batch_size)
    data["quick"] = args.quick
    text = markdown(data)
    stem = "overhead_quick" if args.quick else "overhead"
    write_json(raw_dir / f"{stem}.json", data)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    doc = args.doc or (str(ROOT / "docs" / "benchmarks.md")
                       if not args.quick and out_dir.resolve() == DOCS_DIR.resolve() else None)
    if doc:
        update_section(Path(doc), "overhead", text)
    print(text)
    print(f"wrote {raw_dir / f'{stem}.json'}, {out_dir / f'{stem}.md'}" + (f", updated {doc}" if doc else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
