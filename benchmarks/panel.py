"""Benchmark panel: ``CyclicLearningRate()`` against the usual and the LR-free recipes on eleven small tasks (no
download).

Tasks (``benchmarks/_panel_tasks.py``): ``fashion`` (SGD CNN), ``digits`` (the demo's SGD MLP), ``charlm`` (AdamW
causal transformer on stdlib source), ``adam_mlp`` (Adam MLP), ``reg64`` / ``reg512`` (the noisy SGD regression,
a tanh teacher), ``issue64`` / ``issue512`` (the same with a linear teacher, as issue 12's test trains it),
``digits_b8`` (digits at batch 8), ``resnet`` (a BatchNorm ResNet with weight decay, SGD) and ``charlstm`` (a
character LSTM, Adam, clipped gradients).

Recipes, every one with the same steps, data order and initial weights per seed:
  default        the optimizer's usual constant LR (SGD 0.01, Adam/AdamW 1e-3)
  lr_find        Lightning's ``Tuner.lr_find`` suggestion (100 steps, counted as setup) as a constant LR
  one_cycle      ``OneCycleLR(max_lr=lr_find's suggestion)``, stepped per batch
  one_cycle_valley  the same at fastai's ``valley`` suggestion, read off the same sweep
  schedule_free  Schedule-Free SGD (SGD tasks) or AdamW (Adam/AdamW tasks) at its README's settings
  prodigy        Prodigy (lr=1.0) with cosine annealing over the run; prodigy_bc: with use_bias_correction=True
  warmup_cosine  (charlm only) linear warm-up over 5% of the steps to 1e-3, cosine down to 1e-4 (nanoGPT's habit)
  clr_auto       ``CyclicLearningRate()`` with every default; the optimizer carries the task's LR
  clr[k=v,...]   variants: ``final`` (final_lr_ratio), ``mode``, ``half`` (half_cycle_epochs), ``up``/``down``
                 (step_size_up/step_size_down, optimizer steps), ``div``
                 (RangeTestConfig.base_divisor), ``rule``, ``max`` (fixed bounds max/4..max, no range test),
                 ``opt`` (``sgd``, ``adam``, ``adamw``: the callback on that optimizer instead of the task's)
  oracle         the best constant LR of the task's grid by median final metric; its cost is reported

Raw results go to ``benchmarks/results/panel_<task>.json``; ``--report`` writes the tables into
``docs/benchmarks.md`` from those files.

Usage:
    python benchmarks/panel.py --task digits                      # one task, 3 seeds
    python benchmarks/panel.py --task digits --quick --out-dir /tmp/x   # seconds
    python benchmarks/panel.py --report                           # tables from benchmarks/results/
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import (  # noqa: E402
    StartMarker,
    Tracker,
    machine_info,
    make_trainer,
    progress,
    quiet_lightning,
    read_json,  # noqa: E402
    train_loader,
    write_json,  # noqa: E402
)
from _panel_peers import build_optimizer, fastai_valley, schedule_free_eval  # noqa: E402
from _panel_report import PEERS, report  # noqa: E402
from _panel_tasks import TASKS, Task, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_RECIPES = [*PEERS, "clr_auto", "clr[final=1]", "clr[final=0.01]", "clr[mode=triangular2]", "oracle"]
VARIANT = re.compile(r"^clr\[(.*)\]$")
# clr[opt=...]: the callback on another optimizer than the task's, which carries its usual LR (the range test
# replaces it): what a user of SGD who would otherwise switch to Prodigy (an Adam) can do with the callback
OPT_DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}


class PanelModule(pl.LightningModule):
    """A task's network, loss and optimizer; ``schedule``: None, ``onecycle``, ``warmup_cosine``,
    ``schedule_free``, ``prodigy`` or ``prodigy_bc`` (``benchmarks/_panel_peers.py``)."""

    def __init__(self, task: Task, lr: float, schedule: Optional[str] = None, total_steps: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        self.net, self.task, self.lr = task.make_net(), task, lr  # lr_find writes its suggestion to .lr
        self.schedule, self.total_steps, self.seed = schedule, total_steps, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.schedule == "schedule_free":
            self.optimizers().optimizer.train()  # Schedule-Free: before every training step (its README)

    def prepare_eval(self) -> None:
        """Schedule-Free: the averaged weights, BatchNorm statistics recomputed at them (its README)."""
        if self.schedule == "schedule_free":
            schedule_free_eval(self.net, self.optimizers().optimizer, self.task.train, self.task.batch_size,
                               self.seed)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.task.loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.task, self.parameters(), self.lr, self.schedule, self.total_steps)


class MetricTracker(Tracker):
    """:class:`Tracker` with the task's metric (higher or lower better) instead of accuracy."""

    def __init__(self, task: Task, eval_every: int) -> None:
        super().__init__(*task.test, eval_every)
        self.task = task

    def _evaluate(self, step: int, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self._t_last
        was = pl_module.training
        pl_module.prepare_eval()
        pl_module.eval()
        value = self.task.metric(pl_module.net, *self.task.test)
        pl_module.train(was)
        self.evals.append({"step": step, "seconds": round(self.train_seconds, 3), "value": value})
        self._t_last = time.perf_counter()


def parse_variant(recipe: str) -> dict[str, str]:
    m = VARIANT.match(recipe)
    return dict(item.split("=", 1) for item in filter(None, m.group(1).split(","))) if m else {}


def clr_callback(recipe: str) -> Any:
    from lightning_clr import CyclicLearningRate, RangeTestConfig

    v = parse_variant(recipe)
    unknown = set(v) - {"final", "mode", "half", "div", "rule", "max", "opt", "up", "down"}
    if v.get("opt", "adam") not in OPT_DEFAULT_LR:
        raise SystemExit(f"--recipes {recipe!r}: opt must be one of {sorted(OPT_DEFAULT_LR)}")
    if unknown:
        raise SystemExit(f"--recipes {recipe!r}: unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    if "max" in v:  # fixed bounds instead of the range test: max_lr and base_lr = max_lr / 4 (benchmarks/bounds.py)
        kwargs.update(max_lr=float(v["max"]), base_lr=float(v["max"]) / 4, final_lr_ratio=0.1)  # clr_auto's tail
    rt = {k: conv(v[key]) for key, k, conv in (("div", "base_divisor", float), ("rule", "rule", str)) if key in v}
    if rt:
        kwargs["range_test"] = RangeTestConfig(**rt)
    for key, k, conv in (("final", "final_lr_ratio", float), ("mode", "mode", str),
                         ("half", "half_cycle_epochs", float), ("up", "step_size_up", int),
                         ("down", "step_size_down", int)):
        if key in v:
            kwargs[k] = conv(v[key])
    return CyclicLearningRate(**kwargs)


class Panel:
    def __init__(self, task: Task) -> None:
        self.task = task
        self.total_steps = task.steps_per_epoch * task.epochs
        self.eval_every = max(1, round(task.steps_per_epoch / task.evals_per_epoch))
        self.tmp = tempfile.mkdtemp(prefix="clr_panel_")
        self.found: dict[int, dict[str, Any]] = {}

    def model(self, seed: int, lr: float, schedule: Optional[str] = None) -> PanelModule:
        pl.seed_everything(seed, verbose=False)
        return PanelModule(self.task, lr, schedule, self.total_steps, seed)

    def trainer(self, callbacks: list[Any], max_epochs: int) -> pl.Trainer:
        return make_trainer(callbacks, max_epochs, default_root_dir=self.tmp, gradient_clip_val=self.task.clip)

    def loader(self, seed: int) -> Any:
        return train_loader(*self.task.train, self.task.batch_size, seed)

    def lr_find(self, seed: int) -> dict[str, Any]:
        if seed not in self.found:
            from lightning.pytorch.tuner import Tuner

            trainer = self.trainer([], 10_000)
            t0 = time.perf_counter()
            finder = Tuner(trainer).lr_find(self.model(seed, self.task.model_lr), train_dataloaders=self.loader(seed),
                                            update_attr=False)
            suggestion = finder.suggestion() if finder is not None else None
            valley = fastai_valley(finder.results["lr"], finder.results["loss"]) if finder is not None else None
            self.found[seed] = {"lr": float(suggestion or self.task.default_lr), "seconds": time.perf_counter() - t0,
                                "steps": len(finder.results["lr"]) if finder is not None else 0,
                                "note": None if suggestion else "lr_find gave no suggestion: used the default LR",
                                "valley": float(valley or self.task.default_lr),
                                "valley_note": None if valley else "valley gave no suggestion: used the default LR"}
        return self.found[seed]

    def run(self, recipe: str, seed: int) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": recipe, "seed": seed, "setup_steps": 0, "setup_seconds": 0.0}
        extra: list[Any] = []
        if recipe == "default":
            model, out["lr"] = self.model(seed, self.task.default_lr), self.task.default_lr
        elif recipe.startswith("grid_lr="):
            out["lr"] = float(recipe.split("=", 1)[1])
            model = self.model(seed, out["lr"])
        elif recipe in ("lr_find", "one_cycle"):
            found = self.lr_find(seed)
            out.update(lr=found["lr"], setup_steps=found["steps"], setup_seconds=found["seconds"], note=found["note"])
            model = self.model(seed, found["lr"], "onecycle" if recipe == "one_cycle" else None)
        elif recipe == "one_cycle_valley":
            found = self.lr_find(seed)
            out.update(lr=found["valley"], setup_steps=found["steps"], setup_seconds=found["seconds"],
                       note=found["valley_note"])
            model = self.model(seed, found["valley"], "onecycle")
        elif recipe in ("schedule_free", "prodigy", "prodigy_bc"):
            model = self.model(seed, self.task.default_lr, recipe)
        elif recipe == "warmup_cosine":
            model, out["lr"] = self.model(seed, 1e-3, "warmup_cosine"), 1e-3
        elif recipe == "clr_auto" or VARIANT.match(recipe):
            extra.append(clr_callback(recipe))
            opt = parse_variant(recipe).get("opt")
            if opt is None:
                model = self.model(seed, self.task.model_lr)
            else:  # the callback on another optimizer than the task's (Adam: the family Prodigy belongs to)
                pl.seed_everything(seed, verbose=False)
                other = dataclasses.replace(self.task, optimizer=opt)
                model = PanelModule(other, OPT_DEFAULT_LR[opt], None, self.total_steps, seed)
        else:
            raise ValueError(recipe)
        tracker = MetricTracker(self.task, self.eval_every)
        trainer = self.trainer([tracker, *extra, StartMarker(tracker)], self.task.epochs)
        t0 = time.perf_counter()
        trainer.fit(model, train_dataloaders=self.loader(seed))
        out["fit_seconds"] = round(time.perf_counter() - t0, 3)
        group = trainer.optimizers[0].param_groups[0]
        if recipe == "schedule_free":
            out["lr"] = group["lr"]
        elif recipe in ("prodigy", "prodigy_bc"):  # Prodigy's step is d * lr: its estimate d is what it picked
            out["d"] = float(group["d"])
        if extra:
            clr, result = extra[0], extra[0].range_test_result
            out.update(base_lr=clr.base_lr, max_lr=clr.max_lr, step_size_up=clr.step_size_up,
                       setup_seconds=tracker.setup_seconds, setup_steps=len(result.lrs) if result else 0,
                       fallback=getattr(result, "fallback", None),
                       range_test=result.to_dict() if result is not None else None)
        out.update(self.summarize(tracker))
        return out

    def summarize(self, tracker: MetricTracker) -> dict[str, Any]:
        evals, task = tracker.evals, self.task
        final = evals[-1]["value"] if evals else math.nan
        out: dict[str, Any] = {"final": final if math.isfinite(final) else None, "steps": evals[-1]["step"],
                               "train_seconds": round(tracker.train_seconds, 3), "diverged": tracker.diverged,
                               "evals": evals, "lr_trace": tracker.lrs[:: max(1, len(tracker.lrs) // 200)]}
        for t in task.targets:
            hit = next((e for e in evals if (e["value"] >= t if task.higher_better else e["value"] <= t)), None)
            out[f"steps_to_{t}"] = hit["step"] if hit else None
        return out


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--quick", action="store_true", help="1 seed, shrunk data and epochs, 2-value grid")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--recipes", nargs="+", default=None, help=f"default: {DEFAULT_RECIPES}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(RESULTS), help="where panel_<task>[_quick].json goes")
    p.add_argument("--report", action="store_true", help="write the tables from --out-dir's JSON into --doc")
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--merge", nargs="+", default=[], help="train nothing: merge these results files of one task "
                   "(same settings, run in parallel on other seeds) into --out-dir's panel_<task>.json")
    args = p.parse_args(argv)
    if not args.report and not args.task and not args.merge:
        p.error("give --task, --merge or --report")
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.recipes = args.recipes or DEFAULT_RECIPES
    for r in args.recipes:
        if r not in PEERS + ["clr_auto", "oracle"] and not VARIANT.match(r):
            p.error(f"--recipes: unknown recipe {r!r}")
    return args


SAME = ("task", "description", "optimizer", "epochs", "batch_size", "total_steps", "eval_every", "targets", "grid",
        "model_lr", "quick", "weight_decay", "clip")


def merge(paths: list[str], out_dir: Path) -> int:
    """One results file from several invocations of one task (a seed each, run in parallel; or recipes added
    later). Where two files hold the same recipe and seed, the first file's run is kept."""
    datas = [read_json(Path(p)) for p in paths]
    base = datas[0]
    for path, other in zip(paths[1:], datas[1:]):
        for key in SAME:  # a key one file lacks (written before the key existed) is not compared
            if key in other["config"] and key in base["config"] and other["config"][key] != base["config"][key]:
                raise SystemExit(f"--merge {path}: {key} is {other['config'].get(key)!r}, not "
                                 f"{base['config'].get(key)!r}")
    base["config"]["jobs"] = list(dict.fromkeys(j for d in datas for j in d["config"]["jobs"]))
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for d in datas:
        for r in d["runs"]:
            runs.setdefault((r["recipe"], r["seed"]), r)
    base["runs"] = sorted(runs.values(), key=lambda r: (r["seed"], base["config"]["jobs"].index(r["recipe"])
                                                        if r["recipe"] in base["config"]["jobs"] else 99))
    base["config"]["seeds"] = sorted({r["seed"] for r in base["runs"]})
    base["errors"] = [e for d in datas for e in d["errors"]]
    base["merged"] = [{"path": p, "command": d["command"], "seeds": d["config"]["seeds"],
                       "wall_seconds": d.get("wall_seconds"), "load_average": d["machine"]["load_average"]}
                      for p, d in zip(paths, datas)]
    base["command"] = " + ".join(d["command"] for d in datas) + " (in parallel, then --merge)"
    base["wall_seconds"] = max(d.get("wall_seconds") or 0.0 for d in datas)
    out = out_dir / f"panel_{base['config']['task']}.json.gz"
    write_json(out, base)
    progress(f"wrote {out}: {len(base['runs'])} runs, seeds {base['config']['seeds']}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    if args.report:
        report(Path(args.out_dir), Path(args.doc))
        return 0
    if args.merge:
        return merge(args.merge, Path(args.out_dir))
    task = build(args.task, args.quick, args.data_dir)
    panel = Panel(task)
    jobs = [r for r in args.recipes if r not in ("oracle", "warmup_cosine")]
    if "warmup_cosine" in args.recipes and task.optimizer == "adamw":
        jobs.insert(jobs.index("clr_auto") if "clr_auto" in jobs else len(jobs), "warmup_cosine")
    if "oracle" in args.recipes:  # a grid value equal to the default LR reuses the default's (identical) runs
        jobs += [f"grid_lr={lr:g}" for lr in task.grid if not ("default" in jobs and lr == task.default_lr)]
    # a full run's raw data is kept gzipped in benchmarks/results (reproducibly); a quick run's stays plain JSON
    name = f"panel_{task.name}" + ("_quick.json" if args.quick else ".json.gz")
    data: dict[str, Any] = {
        "command": "python benchmarks/panel.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "runs": [], "errors": [],
        "config": {"task": task.name, "description": task.description, "optimizer": task.optimizer,
                   "epochs": task.epochs, "batch_size": task.batch_size, "steps_per_epoch": task.steps_per_epoch,
                   "total_steps": panel.total_steps, "eval_every": panel.eval_every, "metric": task.metric_name,
                   "higher_better": task.higher_better, "targets": task.targets, "grid": task.grid,
                   "model_lr": task.model_lr, "default_lr": task.default_lr, "seeds": args.seeds, "jobs": jobs,
                   "quick": args.quick, "weight_decay": task.decay, "clip": task.clip, **task.extra},
    }
    t_start = time.perf_counter()
    for seed in args.seeds:  # seed-major: load on the shared machine hits every recipe alike
        for recipe in jobs:
            try:
                r = panel.run(recipe, seed)
            except Exception as err:  # noqa: BLE001 - one failed recipe must not lose the others
                data["errors"].append(f"{recipe} seed {seed}: {type(err).__name__}: {err}")
                progress(f"{task.name} {recipe} seed {seed}: FAILED {type(err).__name__}: {err}")
                continue
            data["runs"].append(r)
            if recipe == "default" and "oracle" in args.recipes and task.default_lr in task.grid:
                data["runs"].append(dict(r, recipe=f"grid_lr={task.default_lr:g}", copy_of="default"))
            progress(f"{task.name} {recipe} seed {seed}: final {r['final']} setup {r['setup_steps']} steps, "
                     f"lr {r.get('lr', '')} bounds {r.get('base_lr', '')}..{r.get('max_lr', '')} "
                     f"({(time.perf_counter() - t_start) / 60:.1f} min)")
            data["wall_seconds"] = round(time.perf_counter() - t_start, 1)
            write_json(Path(args.out_dir) / name, data)
    data["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(Path(args.out_dir) / name, data)
    progress(f"wrote {Path(args.out_dir) / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
