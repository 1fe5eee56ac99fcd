"""Aggregation, goal checks and Markdown tables of the benchmark panel (``benchmarks/panel.py``)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional

from _common import update_section

PEERS = ["default", "lr_find", "one_cycle", "one_cycle_valley", "warmup_cosine", "schedule_free", "prodigy",
         "prodigy_bc"]
ORDER = [*PEERS, "oracle", "clr_auto"]


def _median(values: list[Optional[float]], higher_better: bool) -> Optional[float]:
    """Median where a missing value (diverged run, target never reached) counts as the worst."""
    worst = float("-inf") if higher_better else float("inf")
    vals = sorted(worst if v is None else v for v in values)
    med = statistics.median(vals) if vals else None
    return None if med is None or med in (float("inf"), float("-inf")) else med


def _steps_median(values: list[Optional[int]]) -> Optional[float]:
    vals = sorted(float("inf") if v is None else v for v in values)
    med = statistics.median(vals) if vals else float("inf")
    return None if med == float("inf") else med


def hit(run: dict[str, Any], target: float, higher_better: bool) -> Optional[int]:
    """The first evaluated step at or past ``target`` (from the run's evaluations, so targets can be re-chosen)."""
    for e in run["evals"]:
        v = e["value"]
        if v == v and (v >= target if higher_better else v <= target):  # v == v: not NaN
            return e["step"]
    return None


def aggregate(data: dict[str, Any]) -> dict[str, Any]:
    cfg, hb = data["config"], data["config"]["higher_better"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in data["runs"]:
        by.setdefault(r["recipe"], []).append(r)
    grid = [n for n in by if n.startswith("grid_lr=")]
    oracle = None
    if grid:
        def score(n: str) -> float:
            m = _median([r["final"] for r in by[n]], hb)
            return (m if m is not None else float("-inf") if hb else float("inf")) * (1 if hb else -1)

        oracle = max(grid, key=score)
        by["oracle"] = by[oracle]
    rec: dict[str, Any] = {}
    for name, rs in by.items():
        s: dict[str, Any] = {"n": len(rs), "final": _median([r["final"] for r in rs], hb),
                             "final_min": min((r["final"] for r in rs if r["final"] is not None), default=None),
                             "final_max": max((r["final"] for r in rs if r["final"] is not None), default=None),
                             "setup_steps": statistics.median(r["setup_steps"] for r in rs),
                             "fit_seconds": statistics.median(r["fit_seconds"] for r in rs),
                             "lrs": [r["lr"] for r in rs if r.get("lr") is not None],
                             "ds": [r["d"] for r in rs if r.get("d") is not None],
                             "bounds": [(r["base_lr"], r["max_lr"]) for r in rs if "base_lr" in r],
                             "fallbacks": sum(bool(r.get("fallback")) for r in rs)}
        for t in cfg["targets"]:
            s[f"steps_to_{t}"] = _steps_median([None if hit(r, t, hb) is None else hit(r, t, hb) + r["setup_steps"]
                                                for r in rs])
        rec[name] = s
    cost = {"runs": sum(len(by[n]) for n in grid), "steps": sum(r["steps"] for n in grid for r in by[n]),
            "seconds": round(sum(r["fit_seconds"] for n in grid for r in by[n]), 1)} if grid else None
    return {"recipes": rec, "oracle": oracle, "oracle_cost": cost}


def goals(data: dict[str, Any], agg: dict[str, Any], who: str = "clr_auto") -> list[dict[str, Any]]:
    """``who``'s median against each peer's and the oracle's (0.5 point of accuracy, or 2% of a loss)."""
    cfg, rec = data["config"], agg["recipes"]
    hb = cfg["higher_better"]
    if who not in rec or rec[who]["final"] is None:
        return [{"goal": f"{who} has a result", "ok": False, "gap": None}]
    mine, out = rec[who]["final"], []
    for peer in PEERS:
        if peer in rec and rec[peer]["final"] is not None:
            gap = (mine - rec[peer]["final"]) if hb else (rec[peer]["final"] - mine) / rec[peer]["final"]
            out.append({"goal": f">= {peer}", "ok": gap >= 0, "gap": gap})
    if agg["oracle"]:
        o = rec["oracle"]["final"]
        gap = (mine - o) if hb else (o - mine) / o
        out.append({"goal": "oracle within " + ("0.5 pt" if hb else "2%"), "ok": gap >= (-0.005 if hb else -0.02),
                    "gap": gap})
    return out


def steps_goals(data: dict[str, Any], agg: dict[str, Any], who: str = "clr_auto") -> list[dict[str, Any]]:
    """Steps (setup included) to the task's highest target: ``who`` against every other recipe but the grid's."""
    rec, t = agg["recipes"], data["config"]["targets"][-1]
    mine = rec.get(who, {}).get(f"steps_to_{t}")
    out = []
    for other in PEERS + ["oracle"] + sorted(n for n in rec if n.startswith("clr")):
        if other == who or other not in rec:
            continue
        theirs = rec[other][f"steps_to_{t}"]
        if mine is None and theirs is None:
            continue  # neither got there: no order
        ok = mine is not None and (theirs is None or mine <= theirs)
        out.append({"goal": f"steps to {t} <= {other}", "ok": ok, "mine": mine, "theirs": theirs})
    return out


def _fmt(v: Optional[float], hb: bool) -> str:
    if v is None:
        return "diverged"
    return f"{v:.4f}" if hb else f"{v:.4g}"


def _merged(data: dict[str, Any]) -> list[str]:
    """A line on the runs the last ``--merge`` added (the run line describes the first file's machine)."""
    added = (data.get("merged") or [])[1:]
    if not added:
        return []
    return ["Runs added by the last merge: " + "; ".join(
        f"seeds {p['seeds']}, {(p.get('wall_seconds') or 0) / 60:.1f} min wall, load average {p['load_average'][0]:.1f}"
        for p in added) + " (the line above is the first file's)."]


def task_table(data: dict[str, Any]) -> str:
    cfg, agg = data["config"], aggregate(data)
    rec, hb = agg["recipes"], cfg["higher_better"]
    m = data["machine"]
    names = [n for n in ORDER if n in rec] + sorted(n for n in rec if n.startswith("clr["))
    lines = [f"**{cfg['task']}**: {cfg['description']}; {cfg['optimizer']}, batch {cfg['batch_size']}, "
             f"{cfg['epochs']} epochs = {cfg['total_steps']} steps, seeds {cfg['seeds']}, metric "
             f"{cfg['metric']} ({'higher' if hb else 'lower'} is better) every {cfg['eval_every']} steps.",
             f"Run: `{data['command']}`, {data['wall_seconds'] / 60:.1f} min wall on {m['cpu']} "
             f"({m['cores']} shared cores, {m['torch_threads']} torch thread, load average "
             f"{m['load_average'][0]:.1f} at start), commit {m.get('git_commit')}.", *_merged(data),
             *data.get("notes", []), ""]
    head = ["recipe", f"{cfg['metric']} median [min–max]"] + [f"steps to {t} (incl. setup)" for t in cfg["targets"]]
    head += ["setup steps", "fit s", "LR / bounds (per seed)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        s = rec[n]
        spread = f" [{_fmt(s['final_min'], hb)}–{_fmt(s['final_max'], hb)}]" if s["final_min"] is not None else ""
        lrs = ", ".join(f"{b:.3g}..{x:.3g}" for b, x in s["bounds"]) or ", ".join(f"{v:.3g}" for v in s["lrs"])
        lrs = lrs or ", ".join(f"d={v:.3g}" for v in s["ds"])
        if n == "oracle":
            lrs = agg["oracle"].replace("grid_lr=", "LR ")
        if s["fallbacks"]:
            lrs += f" ({s['fallbacks']} fallback)"
        label = (f"**{n}**" if n == "clr_auto" else n) + (f" ({s['n']} of {len(cfg['seeds'])} seeds)"
                                                          if s["n"] < len(cfg["seeds"]) else "")
        row = [label, _fmt(s["final"], hb) + spread]
        row += ["never" if s[f"steps_to_{t}"] is None else f"{s[f'steps_to_{t}']:g}" for t in cfg["targets"]]
        row += [f"{s['setup_steps']:g}", f"{s['fit_seconds']:.1f}", lrs]
        lines.append("| " + " | ".join(row) + " |")
    if agg["oracle_cost"]:
        c = agg["oracle_cost"]
        grid = ", ".join(f"{g:g}" for g in cfg["grid"])
        seeds = rec["oracle"]["n"] if "oracle" in rec else len(cfg["seeds"])  # the grid's seeds, not the task's
        lines += ["", f"Oracle grid {grid}: {c['runs']} runs, {c['steps']:,} optimizer steps, {c['seconds'] / 60:.1f} "
                      f"min of fits ({c['runs'] // max(1, seeds)} times one recipe's budget)."]
    return "\n".join(lines)


def best_peer(agg: dict[str, Any], hb: bool) -> tuple[Optional[float], str]:
    """The best median of the non-oracle recipes (every peer) and its name."""
    rec = agg["recipes"]
    peers = [(rec[p]["final"], p) for p in PEERS if p in rec and rec[p]["final"] is not None]
    return (max if hb else min)(peers) if peers else (None, "-")


def peer_gap(mine: Optional[float], best: Optional[float], hb: bool) -> Optional[float]:
    """``mine`` against ``best``: accuracy points (higher better) or the fraction of the loss (lower better);
    positive is ahead."""
    if mine is None or best is None:
        return None
    return (mine - best) if hb else (best - mine) / best


def _gap_text(gap: Optional[float], hb: bool) -> str:
    if gap is None:
        return "-"
    ok = gap >= (-0.005 if hb else -0.02)
    text = f"{gap * 100:+.2f} pt" if hb else f"{-gap * 100:+.1f}% loss"
    return f"{text} {'✓' if ok else '✗'}"


def summary_table(datas: list[dict[str, Any]]) -> str:
    """One row per task: the best non-oracle recipe, ``clr_auto`` and each candidate's gap to it, the oracle."""
    cands = sorted({r["recipe"] for d in datas for r in d["runs"] if r["recipe"].startswith("clr")},
                   key=lambda c: (c != "clr_auto", c))
    head = ["task", "metric", "best non-oracle peer (median)", "oracle"] + [f"{c} (gap)" for c in cands]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in datas:
        agg, hb = aggregate(d), d["config"]["higher_better"]
        rec = agg["recipes"]
        best = best_peer(agg, hb)
        row = [d["config"]["task"], d["config"]["metric"], f"{_fmt(best[0], hb)} ({best[1]})",
               _fmt(rec["oracle"]["final"], hb) if agg["oracle"] else "-"]
        for c in cands:
            mine = rec[c]["final"] if c in rec else None
            row.append("-" if c not in rec else f"{_fmt(mine, hb)} ({_gap_text(peer_gap(mine, best[0], hb), hb)})")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Gap: the median against the best non-oracle peer's median: points of accuracy (+: ahead), or the "
                  "loss relative to the peer's (-: lower, ahead). ✓: ahead, or behind by at most 0.5 point of accuracy "
                  "(2% of a loss); ✗: further behind. "
                  "Peers: " + ", ".join(f"`{p}`" for p in PEERS) + " (each where it ran on the task)."]
    return "\n".join(lines)


def gaps(datas: list[dict[str, Any]]) -> str:
    lines = []
    for d in datas:
        agg, hb = aggregate(d), d["config"]["higher_better"]
        for g in goals(d, agg):
            if not g["ok"]:
                gap = "no result" if g["gap"] is None else (f"{-g['gap'] * 100:.2f} points" if hb else
                                                            f"{-g['gap'] * 100:.1f}% of the loss")
                lines.append(f"- {d['config']['task']}: clr_auto {g['goal']}: behind by {gap}")
        for g in steps_goals(d, agg):
            if not g["ok"]:
                lines.append(f"- {d['config']['task']} (time to accuracy): clr_auto {g['goal']}: "
                             f"{g['mine'] if g['mine'] is not None else 'never'} against "
                             f"{g['theirs'] if g['theirs'] is not None else 'never'}")
    return "\n".join(lines) or "- every target met"


def report(results: Path, doc: Path) -> None:
    from _common import read_json
    from _panel_tasks import TASKS

    paths = [next((p for p in (results / f"panel_{t}.json.gz", results / f"panel_{t}.json") if p.exists()), None)
             for t in TASKS]
    datas = [read_json(p) for p in paths if p is not None]
    if not datas:
        raise SystemExit(f"no panel_<task>.json in {results}")
    missed = ("Targets missed by `CyclicLearningRate()` (final metric; then steps, setup included, to each task's "
              "highest target, against every other recipe):")
    body = "\n\n".join(["### Summary", summary_table(datas), missed, gaps(datas), "### Per task",
                        *[task_table(d) for d in datas]])
    update_section(doc, "panel", body)
    print(body)
