"""Aggregation, goal checks, Markdown table and plots of the Fashion-MNIST benchmark's results."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Optional

BASE_RECIPES = ["fixed_sgd", "fixed_adam", "lr_find", "one_cycle", "torch_cyclic", "clr_auto", "clr_tuned", "oracle"]


# ---------------------------------------------------------------------------------------------- aggregate
def _stats(values: list[Optional[float]]) -> dict[str, Any]:
    """Median, min, max; a run that never got there (None) counts as infinitely late."""
    reached = [v for v in values if v is not None]
    keyed = sorted(values, key=lambda v: math.inf if v is None else v)
    med = keyed[(len(keyed) - 1) // 2] if len(keyed) % 2 else None
    if len(keyed) % 2 == 0 and keyed:
        a, b = keyed[len(keyed) // 2 - 1], keyed[len(keyed) // 2]
        med = None if a is None or b is None else (a + b) / 2
    return {"median": med, "min": min(reached) if reached else None, "max": None if len(reached) < len(values) else
            (max(reached) if reached else None), "reached": f"{len(reached)}/{len(values)}"}


def aggregate(runs: list[dict[str, Any]], targets: list[float], grid: list[float]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["recipe"], []).append(r)
    grid_names = [f"grid_sgd_lr={lr:g}" for lr in grid]
    if any(n in by for n in grid_names):
        present = [n for n in grid_names if n in by]
        # Select on the seeds that every grid value ran (a grid may run all seeds on the winner only).
        common = set.intersection(*({r["seed"] for r in by[n]} for n in present))

        def key(n: str) -> tuple[float, float]:
            rs = [r for r in by[n] if r["seed"] in common]
            s = _stats([r["final_acc"] for r in rs])
            return (s["median"] or 0.0, -(_stats([r[f"steps_to_{targets[-1]}"] for r in rs])["median"] or math.inf))

        best = max(present, key=key)
        selected_on = sorted(common)
        by["oracle"] = [dict(r, recipe="oracle", oracle_of=best) for r in by[best]]
        grid_cost = sum(r["train_seconds"] for n in present for r in by[n])
        grid_steps = sum(r["steps"] for n in present for r in by[n])
    else:
        best, grid_cost, grid_steps, selected_on = None, None, None, []
    if "grid_sgd_lr=0.01" in by and "fixed_sgd" not in by:
        by["fixed_sgd"] = [dict(r, recipe="fixed_sgd") for r in by["grid_sgd_lr=0.01"]]
    summary: dict[str, Any] = {}
    for name, rs in by.items():
        s: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for field in ("final_acc", "best_acc", "train_seconds", "setup_seconds", "setup_steps", "seconds_per_step"):
            s[field] = _stats([r.get(field) for r in rs])
        for t in targets:
            s[f"steps_to_{t}"] = _stats([r[f"steps_to_{t}"] for r in rs])
            s[f"seconds_to_{t}"] = _stats([r[f"seconds_to_{t}"] for r in rs])
            s[f"steps_to_{t}_incl_setup"] = _stats(
                [None if r[f"steps_to_{t}"] is None else r[f"steps_to_{t}"] + (r.get("setup_steps") or 0) for r in rs])
            s[f"seconds_to_{t}_incl_setup"] = _stats(
                [None if r[f"seconds_to_{t}"] is None else r[f"seconds_to_{t}"] + (r.get("setup_seconds") or 0)
                 for r in rs])
        for field in ("lr", "base_lr", "max_lr", "step_size_up", "rule", "oracle_of", "half_cycle_epochs",
                      "tuning_seconds"):
            vals = [r.get(field) for r in rs if r.get(field) is not None]
            if vals:
                s[field] = vals
        summary[name] = s
    return {"recipes": summary, "oracle": {"lr_recipe": best, "grid_train_seconds": grid_cost,
                                           "grid_steps": grid_steps, "selected_on_seeds": selected_on}}


def check_goals(agg: dict[str, Any], targets: list[float]) -> list[dict[str, Any]]:
    """The project's goals for clr_auto, each with the numbers that decide it.

    Steps are compared at the highest target that both recipes' medians reach; a recipe whose median never
    reaches a target that clr_auto reaches loses there (it counts as infinitely late).
    """
    rec = agg["recipes"]
    if "clr_auto" not in rec:
        return []

    def med(name: str, field: str) -> Any:
        return rec[name][field]["median"] if name in rec else None

    def steps_goal(other: str, field: str, factor: float = 1.0, label: str = "") -> dict[str, Any]:
        both = [t for t in targets if med("clr_auto", f"steps_to_{t}") is not None
                and med(other, f"steps_to_{t}") is not None]
        mine_only = [t for t in targets if med("clr_auto", f"steps_to_{t}") is not None]
        t = both[-1] if both else (mine_only[-1] if mine_only else targets[0])
        a, b = med("clr_auto", f"steps_to_{t}_incl_setup"), med(other, f"{field}_{t}" if field else f"steps_to_{t}")
        return {"goal": f"steps to {t} (range test included) <= {label or ''}{other}", "target": t,
                "clr_auto": a, "other": b, "ok": a is not None and (b is None or a <= factor * b)}

    goals = [steps_goal("fixed_sgd", "", 0.6, "0.6 x ")]
    for other in ("lr_find", "one_cycle", "torch_cyclic"):
        if other in rec:
            goals.append(steps_goal(other, "steps_to", 1.0, "") | {"goal": f"steps (setup included) <= {other}'s"})
            t = goals[-1]["target"]
            goals[-1]["other"] = med(other, f"steps_to_{t}_incl_setup")
            a, b = goals[-1]["clr_auto"], goals[-1]["other"]
            goals[-1]["goal"] = f"steps to {t}, setup included, <= {other}"
            goals[-1]["ok"] = a is not None and (b is None or a <= b)
    mine = med("clr_auto", "final_acc")
    for other in rec:
        if other == "clr_auto" or other.startswith("grid_") or other.startswith("clr_auto["):
            continue
        b = med(other, "final_acc")
        goals.append({"goal": f"final accuracy >= {other}", "clr_auto": mine, "other": b,
                      "ok": mine is not None and b is not None and mine >= b})
    if "oracle" in rec:
        goals.append(steps_goal("oracle", "", 1.0, ""))
    return goals


# ---------------------------------------------------------------------------------------------- outputs
def _fmt(s: dict[str, Any], digits: int = 4, fmt: str = "g") -> str:
    if s["median"] is None:
        return f"never ({s['reached']})" if s["reached"] == "0/" + s["reached"].split("/")[1] else \
            f"— ({s['reached']})"
    def f(v: float) -> str:
        return f"{v:.{digits}{fmt}}"

    text = f(s["median"])
    if s["min"] is not None and s["max"] is not None and s["min"] != s["max"]:
        text += f" [{f(s['min'])}–{f(s['max'])}]"
    elif s["max"] is None and s["min"] is not None:
        text += f" [{f(s['min'])}–never]"
    return text


def markdown(data: dict[str, Any]) -> str:
    cfg, agg, targets = data["config"], data["aggregate"], data["config"]["targets"]
    rec = agg["recipes"]
    order = [n for n in BASE_RECIPES if n in rec] + sorted(n for n in rec if n not in BASE_RECIPES)
    lines = [
        f"# {cfg['dataset']} benchmark results" + (" (quick smoke run)" if cfg["quick"] else ""),
        "",
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores (shared, noisy), "
        f"{data['machine']['torch_threads']} torch thread(s); torch {data['machine']['torch']}, "
        f"lightning {data['machine']['lightning']}, python {data['machine']['python']}.",
        f"Command: `{data['command']}`. Wall time {data['wall_seconds'] / 60:.1f} min (summed over the merged "
        "invocations, some of which ran in parallel).",
        *[f"Merged with the runs of `{m['command']}` ({m['runs']} runs, {m['wall_seconds'] / 60:.1f} min)."
          for m in data.get("merged", [])],
        f"Seeds {cfg['seeds']}, {cfg['epochs']} epochs of {cfg['steps_per_epoch']} optimizer steps (batch "
        f"{cfg['batch_size']}), test accuracy on the full test set every {cfg['eval_every']} steps and at the end.",
        "Cells: median [min–max] over seeds; steps/seconds are training only (evaluation excluded); "
        "'incl. setup' adds the range test's or lr_find's steps. 'never' = not reached within the budget.",
        "",
    ]
    head = ["recipe", "final acc", "best acc"]
    for t in targets:
        head += [f"steps to {t}", f"steps to {t} incl. setup", f"s to {t} incl. setup"]
    head += ["setup s", "LR / bounds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in order:
        s = rec[n]
        row = [n, _fmt(s["final_acc"]), _fmt(s["best_acc"])]
        for t in targets:
            row += [_fmt(s[f"steps_to_{t}"], 5), _fmt(s[f"steps_to_{t}_incl_setup"], 5),
                    _fmt(s[f"seconds_to_{t}_incl_setup"], 1, "f")]
        row.append(_fmt(s["setup_seconds"], 1, "f"))
        if "base_lr" in s:
            lrs = ", ".join(f"{b:.3g}..{m:.3g}" for b, m in zip(s["base_lr"], s["max_lr"]))
        elif "lr" in s:
            lrs = ", ".join(f"{v:.3g}" for v in s["lr"])
        else:
            lrs = ""
        if "oracle_of" in s:
            lrs = s["oracle_of"][0].replace("grid_sgd_", "")
        row.append(lrs)
        lines.append("| " + " | ".join(row) + " |")
    o = agg["oracle"]
    if o["lr_recipe"]:
        lines += ["", f"Oracle: {o['lr_recipe']} (best median final accuracy of the grid {cfg['grid']} on seeds "
                      f"{o.get('selected_on_seeds')}, then run on every seed); the grid "
                      f"cost {o['grid_steps']} optimizer steps and {o['grid_train_seconds'] / 60:.1f} min of training."]
    if data.get("timing"):
        t = data["timing"]
        lines += ["", "Range test cost: " + t]
    if data.get("goals"):
        lines += ["", "Goals for clr_auto:", ""]
        for g in data["goals"]:
            lines.append(f"- [{'x' if g['ok'] else ' '}] {g['goal']}: clr_auto {g['clr_auto']}, other {g['other']}")
    if data.get("errors"):
        lines += ["", "Errors:", ""] + [f"- {e}" for e in data["errors"]]
    return "\n".join(lines) + "\n"


def timing_note(runs: list[dict[str, Any]]) -> Optional[str]:
    clr = [r for r in runs if r["recipe"] == "clr_auto" and r["setup_steps"]]
    finds = [r for r in runs if r["recipe"] == "lr_find"]
    if not clr:
        return None
    rt_s = statistics.median(r["setup_seconds"] for r in clr)
    rt_steps = statistics.median(r["setup_steps"] for r in clr)
    per_step = statistics.median(r["seconds_per_step"] for r in clr if r["seconds_per_step"])
    text = (f"the range test took {rt_s:.2f} s for {rt_steps:g} steps (median), against {rt_steps * per_step:.2f} s "
            f"for as many training steps ({per_step * 1e3:.1f} ms/step)")
    if finds:
        text += (f" and {statistics.median(r['setup_seconds'] for r in finds):.2f} s for Lightning's lr_find "
                 f"({statistics.median(r['setup_steps'] for r in finds):g} steps)")
    return text + "."


def plots(data: dict[str, Any], out_dir: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    runs = data["runs"]
    names = [n for n in BASE_RECIPES if any(r["recipe"] == n for r in runs)]
    names += sorted({r["recipe"] for r in runs if r["recipe"].startswith("clr_auto[")})
    oracle = data["aggregate"]["oracle"]["lr_recipe"]
    source = {n: n for n in names}
    if oracle:
        source["oracle"] = oracle
        names = [n for n in names if n != "oracle"] + ["oracle"]
    if "fixed_sgd" not in {r["recipe"] for r in runs} and "grid_sgd_lr=0.01" in {r["recipe"] for r in runs}:
        source["fixed_sgd"] = "grid_sgd_lr=0.01"
        names = ["fixed_sgd"] + names
    files = []
    base = [n for n in names if not n.startswith("clr_auto[")]
    variants = ["clr_auto"] + [n for n in names if n.startswith("clr_auto[")] if "clr_auto" in names else []
    for suffix, group, title in (("accuracy", base, "test accuracy per recipe"),
                                 ("ablations", variants, "clr_auto and its variants")):
        if len(group) < 1 or (suffix == "ablations" and len(group) < 2):
            continue
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for i, n in enumerate(group):
            rs = [r for r in runs if r["recipe"] == source[n]]
            shift = statistics.median(r.get("setup_steps", 0) for r in rs)
            steps = sorted({e["step"] for r in rs for e in r["evals"]})
            per_step = [[e["acc"] for r in rs for e in r["evals"] if e["step"] == st] for st in steps]
            xs = [st + shift for st in steps]
            ax.plot(xs, [statistics.median(a) for a in per_step], color=f"C{i % 10}", lw=1.5,
                    ls="-" if i < 10 else "--", label=f"{n} ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
            if len(rs) > 1:
                ax.fill_between(xs, [min(a) for a in per_step], [max(a) for a in per_step], color=f"C{i % 10}",
                                alpha=0.15)
        lo = min((e["acc"] for n in group for r in runs if r["recipe"] == source[n] for e in r["evals"]), default=0)
        ax.set_ylim(max(lo, min(data["config"]["targets"]) - 0.06), None)
        for t in data["config"]["targets"]:
            ax.axhline(t, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("optimizer steps (range test / lr_find steps included)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{data['config']['dataset']}: {title} (median over seeds, band = min..max)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}_{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, n in enumerate(names):
        r = next((r for r in runs if r["recipe"] == source[n]), None)
        if r is None or not r["lr_trace"]["lr"]:
            continue
        stride = r["lr_trace"]["stride"]
        ax.plot([k * stride for k in range(len(r["lr_trace"]["lr"]))], r["lr_trace"]["lr"], color=f"C{i % 10}",
                label=n)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step (training only)")
    ax.set_ylabel("learning rate")
    ax.set_title("LR traces (first seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{stem}_lr.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(str(path))
    return files
