"""The range test's curves of the panel's tasks, recorded once and read offline: a change of the reading is
compared on the same curves, before and after, without training anything.

``--record`` runs ``lightning_clr.lr_range_test`` (every default) on each task and seed, as ``CyclicLearningRate()``
runs it at fit start (same initial weights and data order as ``benchmarks/panel.py``), and saves the curves to
``benchmarks/results/range_test_curves.json.gz``. Without it, the saved curves are read by the working tree's
``suggest`` and, with ``--against DIR`` (another checkout's root), by that checkout's too.

Usage:
    python benchmarks/readings.py --record                      # 33 sweeps, ~2 min on the 2-core docs machine
    python benchmarks/readings.py --against /path/to/old/checkout   # max_lr per seed, before | after
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import quiet_lightning, read_json, write_json  # noqa: E402
from _panel_tasks import TASKS, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "benchmarks" / "results" / "range_test_curves.json.gz"
READ = """
import json, sys
from lightning_clr.range_test._rules import suggest
curves = json.load(sys.stdin)
print(json.dumps({k: suggest(c["lrs"], [float(v) for v in c["smoothed_losses"]], "smith", fallback_max_lr=0.01,
                             raw=[float(v) for v in c["losses"]]).max_lr for k, c in curves.items()}))
"""


def record(tasks: list[str], seeds: list[int]) -> dict[str, Any]:
    import torch
    from panel import Panel

    import lightning_clr

    torch.set_num_threads(1)
    quiet_lightning()
    out: dict[str, Any] = {}
    for name in tasks:
        panel = Panel(build(name))
        for seed in seeds:
            model = panel.model(seed, panel.task.model_lr)
            result = lightning_clr.lr_range_test(panel.trainer([], 1), model, train_dataloaders=panel.loader(seed),
                                                 config=lightning_clr.RangeTestConfig(save=False, progress_bar=False))
            out[f"{name}/{seed}"] = result.to_dict()
            print(f"{name} seed {seed}: max_lr {result.max_lr:.4g}", flush=True)
    return out


def read_with(root: Path, curves: dict[str, Any]) -> dict[str, float]:
    """Every curve's max_lr as the checkout at ``root`` reads it (a subprocess importing its lightning_clr)."""
    proc = subprocess.run([sys.executable, "-c", READ], cwd=root, input=json.dumps(curves), capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(root), "PATH": ""})
    return json.loads(proc.stdout)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", action="store_true")
    p.add_argument("--task", nargs="+", choices=TASKS, default=TASKS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--curves", default=str(CURVES))
    p.add_argument("--against", default=None, help="another checkout's root: its reading of the same curves")
    args = p.parse_args(argv)
    if args.record:
        write_json(Path(args.curves), record(args.task, args.seeds))
        return 0
    curves = read_json(Path(args.curves))
    after = read_with(ROOT, curves)
    before = read_with(Path(args.against), curves) if args.against else None
    print("| task | " + ("max_lr before (per seed) | " if before else "") + "max_lr (per seed) |")
    print("|---|" + ("---|" if before else "") + "---|")
    for task in dict.fromkeys(k.split("/")[0] for k in curves):
        keys = [k for k in curves if k.split("/")[0] == task]
        cells = ([", ".join(f"{before[k]:.3g}" for k in keys)] if before else []) + [
            ", ".join(f"{after[k]:.3g}" for k in keys)]
        print(f"| {task} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
