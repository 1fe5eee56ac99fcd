"""Where the range test puts ``max_lr``: ``CyclicLearningRate()`` against fixed bounds on the same tasks.

For each task and seed, ``CyclicLearningRate()`` (its range test reads both bounds) and the same callback with
fixed bounds, ``max_lr`` from a per-task grid and ``base_lr = max_lr / 4``; the cycle, the default annealing
tail, the data order and the initial weights are the same. The grid shows which ``max_lr`` trains best and where
training falls off a cliff; the reading's ``max_lr`` per seed shows where the range test landed on that map.

Tasks: the eleven of ``benchmarks/panel.py`` (``benchmarks/_panel_tasks.py``), ``digits_b8`` (the digits task with
batches of 8 rows, where the reading used to land on the cliff) included.

Usage:
    python benchmarks/bounds.py                         # every task, 3 seeds (9 min on the 2-core docs machine)
    python benchmarks/bounds.py --task digits_b8        # one task
    python benchmarks/bounds.py --quick --out-dir /tmp/x   # seconds
    python benchmarks/bounds.py --report                # the table in docs/benchmarks.md from the results
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine_info, progress, quiet_lightning, read_json, update_section, write_json  # noqa: E402
from _panel_tasks import EXTRA_TASKS, TASKS, build  # noqa: E402
from panel import Panel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MAX_GRID = {
    "fashion": [0.03, 0.05, 0.08, 0.12, 0.2],
    "digits": [0.1, 0.2, 0.3, 0.6],
    "charlm": [0.01, 0.02, 0.04, 0.08],
    "adam_mlp": [0.003, 0.01, 0.02, 0.05, 0.1],
    "reg64": [0.002, 0.008, 0.016, 0.025, 0.05],
    "reg512": [0.008, 0.016, 0.025, 0.04, 0.06],
    "issue64": [0.006, 0.01, 0.016, 0.025, 0.035],
    "issue512": [0.006, 0.01, 0.016, 0.025, 0.035],
    "digits_b8": [0.02, 0.05, 0.1, 0.2],
    "resnet": [0.03, 0.06, 0.12, 0.25],
    "charlstm": [0.01, 0.03, 0.06, 0.12],
}


def run_task(name: str, seeds: list[int], quick: bool, out_dir: Path) -> Path:
    task = build(name, quick)
    panel = Panel(task)
    grid = MAX_GRID[name][:2] if quick else MAX_GRID[name]
    recipes = ["clr_auto"] + [f"clr[max={m:g}]" for m in grid]
    data: dict[str, Any] = {"command": "python benchmarks/bounds.py " + " ".join(sys.argv[1:]),
                            "machine": machine_info(), "runs": [], "errors": [],
                            "config": {"task": name, "description": task.description, "metric": task.metric_name,
                                       "higher_better": task.higher_better, "grid": grid, "seeds": seeds,
                                       "epochs": task.epochs, "batch_size": task.batch_size, "quick": quick}}
    path = out_dir / (f"bounds_{name}" + ("_quick.json" if quick else ".json.gz"))
    t0 = time.perf_counter()
    for seed in seeds:
        for recipe in recipes:
            r = panel.run(recipe, seed)
            data["runs"].append({k: r.get(k) for k in ("recipe", "seed", "final", "base_lr", "max_lr", "fallback",
                                                       "setup_steps", "steps", "fit_seconds")})
            progress(f"{name} {recipe} seed {seed}: final {r['final']} max_lr {r.get('max_lr')}")
        data["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_json(path, data)
    return path


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Median metric per fixed ``max_lr`` (a run that diverged counts as the worst), the best of them, and the
    reading's ``max_lr`` and metric per seed."""
    cfg = data["config"]
    hb = cfg["higher_better"]
    worst = float("-inf") if hb else float("inf")

    def med(values: list[Optional[float]]) -> Optional[float]:
        m = statistics.median(worst if v is None else v for v in values)
        return None if m in (float("inf"), float("-inf")) else m

    fixed: dict[float, Optional[float]] = {}
    for m in cfg["grid"]:
        fixed[m] = med([r["final"] for r in data["runs"] if r["recipe"] == f"clr[max={m:g}]"])
    auto = [r for r in data["runs"] if r["recipe"] == "clr_auto"]
    scored = [(m, v) for m, v in fixed.items() if v is not None]
    best = (max if hb else min)(scored, key=lambda mv: mv[1]) if scored else (None, None)
    return {"fixed": fixed, "best_max_lr": best[0], "best": best[1], "auto": med([r["final"] for r in auto]),
            "auto_max_lr": [r["max_lr"] for r in sorted(auto, key=lambda r: r["seed"])],
            "fallbacks": sum(bool(r["fallback"]) for r in auto)}


def _fmt(v: Optional[float]) -> str:
    return "diverged" if v is None else f"{v:.4g}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| task | metric | median metric at a fixed `max_lr` (`base_lr = max_lr / 4`) | best fixed |"
             " `CyclicLearningRate()`: `max_lr` per seed | its median metric | vs best fixed |",
             "|---|---|---|---|---|---|---|"]
    for data in results:
        cfg, s = data["config"], summarize(data)
        fixed = ", ".join(f"{m:g}: {_fmt(v)}" for m, v in s["fixed"].items())
        gap = "-"
        if s["auto"] is not None and s["best"] is not None:
            gap = (f"{(s['auto'] - s['best']) * 100:+.2f} pt" if cfg["higher_better"]
                   else f"{(s['auto'] / s['best'] - 1) * 100:+.1f}% loss")
        maxes = ", ".join(f"{m:.3g}" for m in s["auto_max_lr"]) + (f" ({s['fallbacks']} fallback)" if s["fallbacks"]
                                                                   else "")
        lines.append(f"| {cfg['task']} | {cfg['metric']} | {fixed} | {_fmt(s['best'])} (max_lr {s['best_max_lr']:g})"
                     f" | {maxes} | {_fmt(s['auto'])} | {gap} |")
    first = results[0]
    m = first["machine"]
    load = ", ".join(f"{x:.1f}" for x in m.get("load_average") or [])
    lines += ["", f"Seeds {first['config']['seeds']}; medians over seeds. Machine: {m.get('cpu')}, {m.get('cores')}"
              f" cores, {m.get('torch_threads')} torch thread, torch {m.get('torch')}, lightning {m.get('lightning')};"
              f" load average {load} at the start of the first task."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS + EXTRA_TASKS, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--quick", action="store_true", help="1 seed, shrunk tasks, 2 grid values")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--report", action="store_true", help="write the table from --out-dir's results into --doc")
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args(argv)
    quiet_lightning()
    torch.set_num_threads(1)
    out_dir = Path(args.out_dir)
    names = args.task or (["digits"] if args.quick and not args.report else TASKS + EXTRA_TASKS)
    if not args.report:
        out_dir.mkdir(parents=True, exist_ok=True)
        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        for name in names:
            progress(f"wrote {run_task(name, seeds, args.quick, out_dir)}")
    suffix = "_quick.json" if args.quick else ".json.gz"
    found = [read_json(out_dir / f"bounds_{n}{suffix}") for n in names if (out_dir / f"bounds_{n}{suffix}").exists()]
    table = markdown(found)
    if args.report:
        update_section(Path(args.doc), "bounds", table)
        progress(f"updated {args.doc}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
