"""Fashion-MNIST benchmark: lightning_clr's automatic CLR against the usual LR recipes.

Same small CNN, data, batch size, epochs and optimizer family (SGD, momentum 0.9) for every recipe;
several seeds; medians with min and max. Test accuracy on the full 10k test set every ``--eval-every``
optimizer steps (default: half an epoch) and at the end; evaluation time is not counted as training time.

Recipes:
  fixed_sgd        SGD momentum 0.9 at 0.01, the usual default
  fixed_adam       Adam at 1e-3, the usual default
  lr_find          Lightning's ``Tuner.lr_find`` suggestion as a constant LR (lr_find cost reported)
  one_cycle        OneCycleLR with max_lr from Lightning's lr_find (fastai's recipe), stepped per batch
  torch_cyclic     torch CyclicLR, hand-picked bounds 0.001..0.006, triangular, step_size_up = 2 epochs, per batch
  clr_auto         ``CyclicLearningRate()``: the range test (its steps and time included) picks both bounds
  clr_tuned        ``CyclicLearningRate`` with the half-cycle from ``lightning_clr.tune_cycle_length`` (if present)
  oracle           the best fixed SGD LR of a grid (by median final accuracy); the grid's total cost is reported

Variants of clr_auto for the ablations: ``clr_auto[rule=valley,half=3,mode=triangular2,momentum=0,div=10,final=1]``
(``div``: base_lr = max_lr / div; ``final``: final_lr_ratio).

Data: ``apt-get install dataset-fashion-mnist`` (IDX files under /usr/share/datasets/fashion-mnist/), or
the four ``*.gz`` files of github.com/zalandoresearch/fashion-mnist in ``--data-dir``.

Usage:
    python benchmarks/fashion_mnist.py                      # full run (~40 min on 2 shared cores)
    python benchmarks/fashion_mnist.py --quick --dataset digits --out-dir /tmp/x   # seconds

Outputs: the raw results (every run, evaluation and LR trace) as ``<name>.json.gz`` in ``--results-dir``
(default ``benchmarks/results``; with an explicit ``--out-dir``, that directory), the table ``<name>.md`` and
the plots in ``--out-dir`` (default ``docs/benchmarks``).
"""

from __future__ import annotations

import argparse
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
    DOCS_DIR,
    FASHION_DIR,
    ArrayDataModule,
    SmallCNN,
    StartMarker,
    Tracker,
    load_digits_images,
    load_fashion_mnist,
    machine_info,
    make_trainer,
    progress,
    quiet_lightning,
    read_json,
    results_dir,
    train_loader,
    update_section,
    write_json,
)
from _report import BASE_RECIPES, aggregate, check_goals, markdown, plots, timing_note  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]
GRID = [0.005, 0.01, 0.02, 0.05, 0.1]
QUICK_GRID = [0.01, 0.05, 0.2]
VARIANT = re.compile(r"^clr_auto\[(.*)\]$")


# ---------------------------------------------------------------------------------------------- config
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    p.add_argument("--data-dir", default=FASHION_DIR, help="folder with the Fashion-MNIST IDX .gz files")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 3-value grid: a smoke run")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="optimizer steps between test evaluations")
    p.add_argument("--targets", type=float, nargs="+", default=None)
    p.add_argument("--grid", type=float, nargs="+", default=None, help="fixed SGD LRs of the oracle grid")
    p.add_argument("--recipes", nargs="+", default=None, help=f"subset/variants of {BASE_RECIPES}")
    p.add_argument("--tune-trials", type=int, default=3, help="Optuna trials of clr_tuned (tuned once, first seed)")
    p.add_argument("--merge", nargs="+", default=[], help="results JSON files of earlier runs with the same "
                   "settings (other recipes) to aggregate together with this run's")
    p.add_argument("--aggregate-only", action="store_true", help="train nothing: aggregate the --merge files")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--out-dir", default=None, help="table and plots (default: docs/benchmarks)")
    p.add_argument("--results-dir", default=None, help="raw results JSON (default: benchmarks/results, or --out-dir "
                   "when given)")
    p.add_argument("--name", default=None, help="stem of the output files (default: dataset[_quick])")
    args = p.parse_args(argv)
    if args.dataset == "digits":
        args.seeds = args.seeds or [0]
        args.epochs = _default(args.epochs, 6 if args.quick else 12)
        args.batch_size = _default(args.batch_size, 32)
        args.targets = args.targets or [0.8, 0.9, 0.95]
        args.grid = args.grid or QUICK_GRID
    else:
        args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        args.epochs = _default(args.epochs, 2 if args.quick else 6)
        args.batch_size = _default(args.batch_size, 128)
        args.targets = args.targets or [0.86, 0.88, 0.89]
        args.grid = args.grid or (QUICK_GRID if args.quick else GRID)
    args.recipes = args.recipes or list(BASE_RECIPES)
    for r in args.recipes:
        if r not in BASE_RECIPES and not VARIANT.match(r):
            raise SystemExit(f"--recipes: unknown recipe {r!r}; choose from {BASE_RECIPES} or clr_auto[key=value,...]")
    for name in ("epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)!r}")
    args.name = args.name or (args.dataset + ("_quick" if args.quick else ""))
    if args.aggregate_only and not args.merge:
        raise SystemExit("--aggregate-only needs --merge files")
    return args


def _default(value: Optional[int], default: int) -> int:
    return default if value is None else value


def parse_variant(recipe: str) -> dict[str, Any]:
    m = VARIANT.match(recipe)
    if not m:
        return {}
    out: dict[str, Any] = {}
    for item in filter(None, m.group(1).split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------- runs
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.dataset == "digits":
            self.train_x, self.train_y, self.test_x, self.test_y = load_digits_images()
        else:
            self.train_x, self.train_y, self.test_x, self.test_y = load_fashion_mnist(args.data_dir)
        self.image_size = self.train_x.shape[-1]
        self.steps_per_epoch = math.ceil(len(self.train_x) / args.batch_size)
        self.total_steps = self.steps_per_epoch * args.epochs
        self.eval_every = args.eval_every or max(1, self.steps_per_epoch // 2)
        self.tmp = tempfile.mkdtemp(prefix="clr_bench_")
        self.lr_find_cache: dict[int, dict[str, Any]] = {}
        self.tuned_cache: dict[int, dict[str, Any]] = {}

    def model(self, seed: int, **kwargs: Any) -> SmallCNN:
        pl.seed_everything(seed, verbose=False)
        return SmallCNN(image_size=self.image_size, **kwargs)

    def loader(self, seed: int):
        return train_loader(self.train_x, self.train_y, self.args.batch_size, seed)

    def fit(self, model: SmallCNN, seed: int, extra_callbacks: Optional[list[Any]] = None) -> tuple[Tracker, float]:
        tracker = Tracker(self.test_x, self.test_y, self.eval_every)
        callbacks = [tracker, *(extra_callbacks or []), StartMarker(tracker)]
        trainer = make_trainer(callbacks, self.args.epochs, default_root_dir=self.tmp)
        t0 = time.perf_counter()
        trainer.fit(model, train_dataloaders=self.loader(seed))
        return tracker, time.perf_counter() - t0

    def lr_find(self, seed: int) -> dict[str, Any]:
        """Lightning's finder (default 100 steps, 1e-8..1), once per seed; shared by lr_find and one_cycle."""
        if seed not in self.lr_find_cache:
            from lightning.pytorch.tuner import Tuner

            model = self.model(seed)
            trainer = make_trainer([], self.args.epochs, default_root_dir=self.tmp)
            t0 = time.perf_counter()
            finder = Tuner(trainer).lr_find(model, train_dataloaders=self.loader(seed), update_attr=False)
            seconds = time.perf_counter() - t0
            suggestion = finder.suggestion() if finder is not None else None
            note = None
            if suggestion is None:
                suggestion, note = 0.01, "lr_find gave no suggestion; used 0.01"
            self.lr_find_cache[seed] = {"lr": float(suggestion), "seconds": seconds,
                                        "steps": len(finder.results["lr"]) if finder is not None else 0, "note": note}
        return self.lr_find_cache[seed]

    def run(self, recipe: str, seed: int) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": recipe, "seed": seed, "setup_seconds": 0.0, "setup_steps": 0}
        extra: list[Any] = []
        if recipe == "fixed_adam":
            model = self.model(seed, optimizer="adam", lr=1e-3)
            out["lr"] = 1e-3
        elif recipe.startswith("grid_"):
            lr = float(recipe.split("=", 1)[1])
            model = self.model(seed, lr=lr)
            out["lr"] = lr
        elif recipe in ("lr_find", "one_cycle"):
            found = self.lr_find(seed)
            out.update(setup_seconds=found["seconds"], setup_steps=found["steps"], lr=found["lr"], note=found["note"])
            if recipe == "lr_find":
                model = self.model(seed, lr=found["lr"])
            else:
                model = self.model(seed, lr=found["lr"], schedule={"name": "onecycle", "total_steps": self.total_steps})
        elif recipe == "torch_cyclic":
            spec = {"name": "cyclic", "base_lr": 0.001, "max_lr": 0.006, "step_size_up": 2 * self.steps_per_epoch}
            model = self.model(seed, lr=0.001, schedule=spec)
            out.update(base_lr=0.001, max_lr=0.006, step_size_up=spec["step_size_up"])
        elif recipe == "clr_auto" or VARIANT.match(recipe):
            from lightning_clr import CyclicLearningRate, RangeTestConfig

            v = parse_variant(recipe)
            kwargs: dict[str, Any] = {}
            rt: dict[str, Any] = {}
            if "rule" in v:
                rt["rule"] = v["rule"]
            if "div" in v:
                rt["base_divisor"] = float(v["div"])
            if rt:
                kwargs["range_test"] = RangeTestConfig(**rt)
            if "half" in v:
                kwargs["half_cycle_epochs"] = float(v["half"])
            if "mode" in v:
                kwargs["mode"] = v["mode"]
            if "momentum" in v:
                kwargs["cycle_momentum"] = v["momentum"] not in ("0", "false", "False")
            if "whole" in v:
                kwargs["fit_whole_cycles"] = v["whole"] not in ("0", "false", "False")
            if "final" in v:
                kwargs["final_lr_ratio"] = float(v["final"])
            clr = CyclicLearningRate(**kwargs)
            extra.append(clr)
            model = self.model(seed)
        elif recipe == "clr_tuned":
            from lightning_clr import CyclicLearningRate

            tuned = self.tune(seed)
            out.update(tuning_seconds=tuned["seconds"], tuning_epochs=tuned.get("epochs"),
                       half_cycle_epochs=tuned["half"])
            clr = CyclicLearningRate(half_cycle_epochs=tuned["half"])
            extra.append(clr)
            model = self.model(seed)
        else:
            raise ValueError(recipe)
        tracker, fit_seconds = self.fit(model, seed, extra)
        if extra:
            clr = extra[0]
            result = getattr(clr, "range_test_result", None)
            steps = len(getattr(result, "lrs", []) or []) if result is not None else 0
            out.update(base_lr=clr.base_lr, max_lr=clr.max_lr, step_size_up=clr.step_size_up,
                       setup_seconds=tracker.setup_seconds, setup_steps=steps,
                       rule=getattr(result, "rule", None))
            if result is not None:
                out.update(range_test={k: getattr(result, k, None) for k in (
                    "fallback", "message", "stopped_early", "stop_reason", "suggestions")},
                    range_test_curve={"lrs": list(result.lrs), "smoothed_losses": list(result.smoothed_losses)})
        out.update(self.summarize(tracker, fit_seconds))
        return out

    def tune(self, seed: int) -> dict[str, Any]:
        """Tune the half-cycle once (first seed), on a held-out validation split of the training set (never the
        test set); the result is reused for every seed and its cost is reported separately."""
        if self.tuned_cache:
            return next(iter(self.tuned_cache.values()))
        from lightning_clr import tune_cycle_length

        args = self.args
        val_size = len(self.train_x) // 12  # 5,000 of Fashion-MNIST's 60,000

        def model_factory() -> SmallCNN:
            return SmallCNN(image_size=self.image_size)

        def data_factory() -> ArrayDataModule:
            return ArrayDataModule(self.train_x, self.train_y, val_size, args.batch_size, seed)

        t0 = time.perf_counter()
        result = tune_cycle_length(
            model_factory, data_factory,
            trainer_kwargs={"accelerator": "cpu", "devices": 1, "enable_checkpointing": False,
                            "enable_model_summary": False, "num_sanity_val_steps": 0},
            n_trials=args.tune_trials, max_epochs=args.epochs, min_half_cycle_epochs=1,
            max_half_cycle_epochs=max(1, args.epochs // 2), monitor="val_acc", direction="maximize", seed=seed,
            output_dir=str(Path(self.tmp) / "tuning"), logger=False, plot=False, progress_bar=False,
        )
        if result.best_half_cycle_epochs is None:
            raise RuntimeError("tune_cycle_length completed no trial")
        self.tuned_cache[seed] = {"seconds": time.perf_counter() - t0, "half": float(result.best_half_cycle_epochs),
                                  "epochs": result.epochs_trained, "trials": args.tune_trials}
        return self.tuned_cache[seed]

    def summarize(self, tracker: Tracker, fit_seconds: float) -> dict[str, Any]:
        evals = tracker.evals
        steps = evals[-1]["step"] if evals else 0
        out: dict[str, Any] = {
            "final_acc": evals[-1]["acc"] if evals else None,
            "best_acc": max(e["acc"] for e in evals) if evals else None,
            "steps": steps,
            "train_seconds": round(tracker.train_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "seconds_per_step": tracker.train_seconds / steps if steps else None,
            "diverged": tracker.diverged,
            "evals": evals,
        }
        stride = max(1, len(tracker.lrs) // 400)
        out["lr_trace"] = {"stride": stride, "lr": tracker.lrs[::stride],
                           "momentum": tracker.momenta[::stride]}
        for target in self.args.targets:
            hit = next((e for e in evals if e["acc"] >= target), None)
            out[f"steps_to_{target}"] = hit["step"] if hit else None
            out[f"seconds_to_{target}"] = hit["seconds"] if hit else None
        return out


SAME = ("dataset", "epochs", "batch_size", "steps_per_epoch", "eval_every", "targets", "train_size", "test_size")


def merge(data: dict[str, Any], other: dict[str, Any], path: str) -> None:
    """Add another invocation's runs (recipes this one did not run) after checking that the settings match."""
    for key in SAME:
        if other["config"][key] != data["config"][key]:
            raise SystemExit(f"--merge {path}: {key} is {other['config'][key]!r} there, {data['config'][key]!r} here")
    have = {(r["recipe"], r["seed"]) for r in data["runs"]}
    added = [r for r in other["runs"] if (r["recipe"], r["seed"]) not in have]
    data["runs"].extend(added)
    data["errors"].extend(other.get("errors", []))
    data.setdefault("merged", []).append({"path": path, "command": other["command"], "runs": len(added),
                                          "wall_seconds": other.get("wall_seconds"), "machine": other["machine"]})
    data["wall_seconds"] += other.get("wall_seconds") or 0.0
    if any(r["recipe"].startswith("grid_") for r in added):
        data["config"]["grid"] = sorted(set(data["config"]["grid"]) | set(other["config"]["grid"]))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    out_dir = Path(args.out_dir) if args.out_dir is not None else DOCS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_dir = results_dir(args.results_dir, args.out_dir)
    if args.aggregate_only:  # nothing trains: the data's shape comes from the first merged file, not the data
        first = read_json(Path(args.merge[0]))["config"]
        bench: Any = None
        shape = {k: first[k] for k in ("steps_per_epoch", "eval_every", "train_size", "test_size")}
    else:
        bench = Bench(args)
        shape = {"steps_per_epoch": bench.steps_per_epoch, "eval_every": bench.eval_every,
                 "train_size": len(bench.train_x), "test_size": len(bench.test_x)}
    jobs: list[str] = []
    for r in [] if args.aggregate_only else args.recipes:
        if r == "oracle":
            jobs += [f"grid_sgd_lr={lr:g}" for lr in args.grid]
        elif r == "fixed_sgd" and 0.01 in args.grid and "oracle" in args.recipes:
            continue  # the grid's 0.01 runs are the fixed_sgd runs
        else:
            jobs.append(r)
    t_start = time.perf_counter()
    data: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]) if argv is None else "python benchmarks/fashion_mnist.py " +
        " ".join(argv),
        # Aggregating trains nothing: the machine that counts is the one of the (first) merged runs.
        "machine": read_json(Path(args.merge[0]))["machine"] if args.aggregate_only else machine_info(),
        "config": {"dataset": args.dataset, "quick": args.quick, "seeds": args.seeds, "epochs": args.epochs,
                   "batch_size": args.batch_size, "steps_per_epoch": shape["steps_per_epoch"],
                   "eval_every": shape["eval_every"], "targets": args.targets, "grid": args.grid, "jobs": jobs,
                   "train_size": shape["train_size"], "test_size": shape["test_size"]},
        "runs": [], "errors": [],
    }
    json_path, md_path = raw_dir / f"{args.name}.json.gz", out_dir / f"{args.name}.md"
    n_jobs = len(jobs) * len(args.seeds)
    k = 0
    for seed in args.seeds:  # seed-major: the recipes interleave, so load on the shared machine hits all alike
        for recipe in jobs:
            k += 1
            try:
                r = bench.run(recipe, seed)
            except Exception as err:  # noqa: BLE001 - a missing piece (tuning) must not kill the benchmark
                data["errors"].append(f"{recipe} seed {seed}: {type(err).__name__}: {err}")
                progress(f"[{k}/{n_jobs}] {recipe} seed {seed}: FAILED {type(err).__name__}: {err}")
                continue
            data["runs"].append(r)
            extra = f" bounds {r['base_lr']:.3g}..{r['max_lr']:.3g}" if isinstance(r.get("base_lr"), float) else ""
            progress(f"[{k}/{n_jobs}] {recipe} seed {seed}: final {r['final_acc']:.4f} best {r['best_acc']:.4f} "
                     f"train {r['train_seconds']:.1f}s setup {r['setup_seconds']:.1f}s/{r['setup_steps']} steps"
                     f"{extra} (elapsed {(time.perf_counter() - t_start) / 60:.1f} min)")
            data["wall_seconds"] = time.perf_counter() - t_start
            write_json(json_path, data)  # partial results survive an interruption
    data["wall_seconds"] = time.perf_counter() - t_start
    for path in args.merge:
        merge(data, read_json(Path(path)), path)
    data["aggregate"] = aggregate(data["runs"], args.targets, data["config"]["grid"]
                                  if any(r["recipe"].startswith("grid_") for r in data["runs"]) else [])
    data["goals"] = check_goals(data["aggregate"], args.targets)
    data["timing"] = timing_note(data["runs"])
    data["plots"] = plots(data, out_dir, args.name)
    write_json(json_path, data)
    md_path.write_text(markdown(data))
    if out_dir.resolve() == DOCS_DIR.resolve() and not args.quick and args.name == args.dataset:
        body = markdown(data).split("\n", 2)[2]  # without the title
        update_section(ROOT / "docs" / "benchmarks.md", args.name, body)
        progress("updated docs/benchmarks.md")
    print(md_path.read_text())
    progress(f"wrote {json_path}, {md_path}" + "".join(f", {p}" for p in data["plots"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
