"""Smoke runs of the benchmark scripts and the demo, as real subprocesses on scikit-learn's digits.

The full Fashion-MNIST benchmark takes ~40 minutes and is run by ``make bench``; here each script runs
its ``--quick`` mode for seconds and the files it writes are checked.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common  # noqa: E402
import _report  # noqa: E402
import fashion_mnist  # noqa: E402

QUICK_RECIPES = ["fixed_sgd", "fixed_adam", "lr_find", "one_cycle", "torch_cyclic", "clr_auto", "oracle"]


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_fashion_benchmark_quick_on_digits(tmp_path: Path) -> None:
    docs, results = tmp_path / "docs", tmp_path / "results"
    _run(["benchmarks/fashion_mnist.py", "--quick", "--dataset", "digits", "--out-dir", str(docs),
          "--results-dir", str(results), "--recipes", *QUICK_RECIPES], timeout=450)
    assert sorted(p.name for p in results.iterdir()) == ["digits_quick.json.gz"]  # raw data: out of the docs
    assert not list(docs.glob("*.json*")) and (docs / "digits_quick.md").is_file()
    data = _common.read_json(results / "digits_quick.json.gz")
    assert data["errors"] == []
    cfg = data["config"]
    assert cfg["dataset"] == "digits" and cfg["quick"] is True
    total = cfg["epochs"] * cfg["steps_per_epoch"]
    ran = {r["recipe"] for r in data["runs"]}
    assert ran == {"fixed_adam", "lr_find", "one_cycle", "torch_cyclic", "clr_auto"} | {
        f"grid_sgd_lr={lr:g}" for lr in cfg["grid"]}
    for r in data["runs"]:
        assert r["steps"] == total, r["recipe"]  # every recipe trains the same budget
        assert 0.0 <= r["final_acc"] <= r["best_acc"] <= 1.0
        assert r["evals"][-1]["step"] == total and r["train_seconds"] > 0
        assert len(r["lr_trace"]["lr"]) >= total // r["lr_trace"]["stride"]
    by = {r["recipe"]: r for r in data["runs"]}
    # lr_find's suggestion drives lr_find and one_cycle; its steps are counted as setup
    assert by["lr_find"]["lr"] == by["one_cycle"]["lr"] and by["lr_find"]["setup_steps"] > 0
    # torch's CyclicLR really cycles per step between the hand-picked bounds
    lrs = by["torch_cyclic"]["lr_trace"]["lr"]
    assert min(lrs) == pytest.approx(0.001) and max(lrs) <= 0.006 + 1e-12 and max(lrs) > 0.004
    # the range test ran, chose 0 < base < max, and its steps and time are recorded
    clr = by["clr_auto"]
    assert 0 < clr["base_lr"] < clr["max_lr"] and clr["setup_steps"] >= 10 and clr["setup_seconds"] > 0
    assert max(clr["lr_trace"]["lr"]) <= clr["max_lr"] + 1e-12
    rec = data["aggregate"]["recipes"]
    assert {"fixed_sgd", "oracle", "clr_auto"} <= set(rec)
    oracle = data["aggregate"]["oracle"]["lr_recipe"]
    assert rec["oracle"]["final_acc"]["median"] == max(rec[f"grid_sgd_lr={lr:g}"]["final_acc"]["median"]
                                                       for lr in cfg["grid"])
    assert oracle in {f"grid_sgd_lr={lr:g}" for lr in cfg["grid"]}
    assert rec["oracle"]["final_acc"]["median"] > 0.5  # the best fixed LR learns the digits
    assert data["goals"], "the goal checks for clr_auto are computed"
    md = (docs / "digits_quick.md").read_text()
    for name in ("fixed_sgd", "fixed_adam", "lr_find", "one_cycle", "torch_cyclic", "clr_auto", "oracle"):
        assert f"| {name} |" in md
    for png in data["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data["plots"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overhead_quick(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Benchmarks\n\nkept text\n")
    _run(["benchmarks/overhead.py", "--quick", "--out-dir", str(tmp_path), "--doc", str(doc)], timeout=280)
    data = json.loads((tmp_path / "overhead_quick.json").read_text())
    for key in ("callback_apply", "callback_hooks", "torch_cycliclr_step", "guard_batch_end", "guard_check"):
        cost = data["per_step"][key]
        assert 0 < cost["min_us"] <= cost["median_us"] <= cost["max_us"] < 10_000, key
    fit = data["whole_fit"]
    for kind in ("constant", "callback", "empty_callback", "torch_cycliclr", "callback_guard"):
        assert len(fit["wall_s"][kind]) == len(fit["cpu_s"][kind]) == fit["repeats"], kind
        assert all(0 < c for c in fit["cpu_s"][kind])
    assert math.isfinite(fit["ratio"]) and 0.2 < fit["ratio"] < 5
    assert fit["ratio"] == pytest.approx(fit["median_wall_s"]["callback"] / fit["median_wall_s"]["constant"])
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkept text\n") and "<!-- overhead:start -->" in text
    assert "CyclicLR.step()" in text and "ratio" in text
    assert "guard on vs off" in text and 0.2 < fit["paired_cpu_ratio_guard_vs_callback"]["median"] < 5
    # a second run replaces the section instead of appending another one
    _common.update_section(doc, "overhead", "new text")
    assert doc.read_text().count("<!-- overhead:start -->") == 1 and "new text" in doc.read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_quick(tmp_path: Path) -> None:
    proc = _run(["examples/demo.py", "--epochs", "2", "--seeds", "1", "--out-dir", str(tmp_path)], timeout=280)
    assert "Chosen bounds" in proc.stdout and "fixed LR 0.01" in proc.stdout
    assert "range test (" in proc.stdout  # the bounds came from the automatic range test
    for name in ("range_test.png", "lr_trace.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_docs_tables_regenerate_from_the_stored_results(tmp_path: Path) -> None:
    """The published Fashion-MNIST table and plots come from the raw runs in benchmarks/results: aggregating the
    stored parts again gives the same Markdown (bar the command line) and byte-identical plots."""
    stored = _common.read_json(_common.RESULTS_DIR / "fashion_mnist.json.gz")
    parts = [m["path"] for m in stored["merged"]]
    assert parts and all(p.startswith("benchmarks/results/parts/") and (ROOT / p).is_file() for p in parts)
    _run(["benchmarks/fashion_mnist.py", "--aggregate-only", "--out-dir", str(tmp_path / "docs"),
          "--results-dir", str(tmp_path / "results"), "--merge", *parts], timeout=280)
    published = (_common.DOCS_DIR / "fashion_mnist.md").read_text().splitlines()
    regenerated = (tmp_path / "docs" / "fashion_mnist.md").read_text().splitlines()
    command = [i for i, line in enumerate(published) if line.startswith("Command: ")]
    recipes = {r["recipe"] for r in stored["runs"]}
    assert len(recipes) >= 5 and all(any(line.startswith(f"| {r} |") for line in published) for r in recipes)
    assert command == [i for i, line in enumerate(regenerated) if line.startswith("Command: ")]
    assert [line for i, line in enumerate(regenerated) if i not in command] == \
        [line for i, line in enumerate(published) if i not in command]
    for plot in ("accuracy", "ablations", "lr"):
        name = f"fashion_mnist_{plot}.png"
        assert (tmp_path / "docs" / name).read_bytes() == (_common.DOCS_DIR / name).read_bytes(), name
    assert not list(_common.DOCS_DIR.rglob("*.json*"))  # no raw data left beside the docs


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_quick_is_a_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py --quick without CUDA: the sync check is skipped (and says so), the skip count, the
    compiled step's recompiles (dynamo's eager backend) and the overhead code still run through real fits."""
    proc = _run(["benchmarks/gpu_check.py", "--quick", "--out-dir", str(tmp_path)], timeout=580)
    data = json.loads((tmp_path / "gpu_check_quick.json").read_text())
    assert data["cuda"] is False and data["ok"] is True and data["errors"] == {}
    assert any("set_sync_debug_mode needs CUDA" in line for line in data["skipped"]) and "skipped: sync" in proc.stdout
    amp = data["checks"]["fused_amp"]
    assert amp["skipped"] == 2 and amp["counted"] == amp["steps"] - 2 and amp["found_inf"] == ["Tensor"]
    assert amp["sync_checked"] is False and amp["lr_is_tensor"] is True
    compiled = data["checks"]["compiled"]
    assert compiled["backend"] == "eager" and compiled["recompiles"] == {} and compiled["graphs"] >= 1
    assert compiled["counted"] == compiled["steps"] and compiled["cycles"] >= 2 and compiled["range_test"]
    overhead = data["checks"]["overhead"]
    assert 0 < overhead["hooks_per_step_us"] < 1000 and set(overhead["median_wall_s"]) == {"callback",
                                                                                            "empty_callback"}


def test_json_gz_roundtrip_is_reproducible(tmp_path: Path) -> None:
    data = {"runs": [{"acc": 0.9, "lr": [0.1, 0.2]}]}
    _common.write_json(tmp_path / "a.json.gz", data)
    first = (tmp_path / "a.json.gz").read_bytes()
    _common.write_json(tmp_path / "a.json.gz", data)
    assert (tmp_path / "a.json.gz").read_bytes() == first  # no timestamp in the gzip header: no spurious diffs
    assert gzip.decompress(first).decode().startswith("{")
    assert _common.read_json(tmp_path / "a.json.gz") == data
    _common.write_json(tmp_path / "a.json", data)
    assert _common.read_json(tmp_path / "a.json") == data == json.loads((tmp_path / "a.json").read_text())


def test_read_idx_roundtrip_and_errors(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())
    np.testing.assert_array_equal(_common.read_idx(path), images)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        _common.read_idx(bad)
    with pytest.raises(FileNotFoundError, match="--data-dir .*apt-get install dataset-fashion-mnist"):
        _common.load_fashion_mnist(str(tmp_path))


def test_stats_count_unreached_runs_as_late() -> None:
    s = _report._stats([300, None, 100])
    assert s["median"] == 300 and s["min"] == 100 and s["max"] is None and s["reached"] == "2/3"
    assert _report._stats([None, None, 5])["median"] is None
    assert _report._stats([1.0, 3.0])["median"] == 2.0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(SystemExit, match="--recipes: unknown recipe 'nope'"):
        fashion_mnist.parse_args(["--recipes", "nope"])
    with pytest.raises(SystemExit, match="--epochs must be >= 1, got 0"):
        fashion_mnist.parse_args(["--epochs", "0"])
    assert fashion_mnist.parse_variant("clr_auto[rule=valley,half=3]") == {"rule": "valley", "half": "3"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_panel_quick_and_report(tmp_path: Path) -> None:
    """panel.py --quick on two tasks (SGD classifier, noisy regression) and on the transformer's own recipes, then
    --report: every recipe trains the same budget, the oracle is the grid's best, the tables land in the doc."""
    import _panel_report

    _run(["benchmarks/panel.py", "--task", "digits", "--quick", "--out-dir", str(tmp_path)], timeout=280)
    _run(["benchmarks/panel.py", "--task", "reg64", "--quick", "--out-dir", str(tmp_path), "--recipes", "default",
          "lr_find", "clr_auto", "clr[final=0.1]", "oracle"], timeout=280)
    _run(["benchmarks/panel.py", "--task", "charlm", "--quick", "--out-dir", str(tmp_path), "--recipes",
          "warmup_cosine", "clr_auto"], timeout=280)
    digits = json.loads((tmp_path / "panel_digits_quick.json").read_text())
    cfg = digits["config"]
    assert digits["errors"] == [] and cfg["quick"] and cfg["higher_better"]
    ran = {r["recipe"] for r in digits["runs"]}
    assert ran == {"default", "lr_find", "one_cycle", "one_cycle_valley", "schedule_free", "prodigy", "prodigy_bc",
                   "clr_auto", "clr[final=1]", "clr[final=0.01]", "clr[mode=triangular2]"} | {
        f"grid_lr={lr:g}" for lr in cfg["grid"]}  # no warm-up+cosine on SGD
    by = {r["recipe"]: r for r in digits["runs"]}
    # the LR-free peers at their READMEs' settings: Schedule-Free SGD at 10x the usual LR, Prodigy's own estimate
    assert by["schedule_free"]["lr"] == pytest.approx(10 * cfg["default_lr"]) and by["prodigy"]["d"] > 1e-6
    assert by["prodigy"]["lr_trace"][0] == pytest.approx(1.0) and by["prodigy"]["lr_trace"][-1] < 0.01  # cosine
    assert by["one_cycle_valley"]["setup_steps"] == by["lr_find"]["setup_steps"] > 0
    for r in digits["runs"]:
        assert r["steps"] == cfg["total_steps"] and 0 <= r["final"] <= 1, r["recipe"]
    assert by["grid_lr=0.01"]["final"] == by["default"]["final"]  # the default's runs serve the grid's 0.01
    assert by["lr_find"]["lr"] == by["one_cycle"]["lr"] and by["lr_find"]["setup_steps"] > 0
    clr = by["clr_auto"]
    assert 0 < clr["base_lr"] < clr["max_lr"] and clr["setup_steps"] >= 10
    plain = by["clr[final=1]"]  # the default's annealing tail ends below base_lr; final_lr_ratio=1 ends at it
    assert clr["lr_trace"][-1] < clr["base_lr"] * 0.5 and min(plain["lr_trace"]) >= plain["base_lr"] * 0.999
    agg = _panel_report.aggregate(digits)
    best = max((n for n in agg["recipes"] if n.startswith("grid_lr=")), key=lambda n: agg["recipes"][n]["final"])
    assert agg["oracle"] == best and agg["recipes"]["oracle"]["final"] == agg["recipes"][best]["final"]
    reg = json.loads((tmp_path / "panel_reg64_quick.json").read_text())
    assert reg["config"]["higher_better"] is False and reg["config"]["model_lr"] == 1e-4
    assert all(r["final"] is None or r["final"] > 0 for r in reg["runs"])
    lm = {r["recipe"]: r for r in json.loads((tmp_path / "panel_charlm_quick.json").read_text())["runs"]}
    assert set(lm) == {"warmup_cosine", "clr_auto"} and all(r["final"] < 5.0 for r in lm.values())  # ln 128 = 4.85
    assert max(lm["warmup_cosine"]["lr_trace"]) == pytest.approx(1e-3)
    doc = tmp_path / "doc.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    for stem in ("panel_digits", "panel_reg64", "panel_charlm"):  # --report reads the full-run names
        (tmp_path / f"{stem}_quick.json").rename(tmp_path / f"{stem}.json")
    _run(["benchmarks/panel.py", "--report", "--out-dir", str(tmp_path), "--doc", str(doc)], timeout=120)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and text.count("<!-- panel:start -->") == 1
    assert "| **clr_auto** |" in text and "| digits | val acc |" in text and "| reg64 | test MSE |" in text
    assert f"{agg['recipes']['clr_auto']['final']:.4f}" in text and "Oracle grid 0.01, 0.1: 2 runs" in text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bounds_quick_puts_the_reading_on_the_fixed_bounds_map(tmp_path: Path) -> None:
    """bounds.py --quick: CyclicLearningRate() and fixed bounds on the same task and seed, then --report."""
    import bounds

    proc = _run(["benchmarks/bounds.py", "--quick", "--task", "issue512", "--out-dir", str(tmp_path)], timeout=280)
    data = json.loads((tmp_path / "bounds_issue512_quick.json").read_text())
    cfg = data["config"]
    assert cfg["quick"] and cfg["higher_better"] is False and cfg["grid"] == bounds.MAX_GRID["issue512"][:2]
    by = {r["recipe"]: r for r in data["runs"]}
    assert set(by) == {"clr_auto"} | {f"clr[max={m:g}]" for m in cfg["grid"]}
    for m in cfg["grid"]:  # fixed bounds: no range test, max_lr as given, base_lr a quarter of it
        r = by[f"clr[max={m:g}]"]
        assert r["max_lr"] == m and r["base_lr"] == m / 4 and r["setup_steps"] == 0
    assert by["clr_auto"]["setup_steps"] > 0 and not by["clr_auto"]["fallback"]
    summary = bounds.summarize(data)
    assert summary["best"] == min(by[f"clr[max={m:g}]"]["final"] for m in cfg["grid"])
    assert summary["auto_max_lr"] == [by["clr_auto"]["max_lr"]]
    assert "| issue512 | test MSE |" in proc.stdout
    doc = tmp_path / "doc.md"
    doc.write_text("# Benchmarks\n")
    _run(["benchmarks/bounds.py", "--report", "--quick", "--task", "issue512", "--out-dir", str(tmp_path), "--doc",
          str(doc)], timeout=60)
    assert "<!-- bounds:start -->" in doc.read_text() and "| issue512 | test MSE |" in doc.read_text()


def test_fastai_valley_is_fastais_rule() -> None:
    """fastai's ``valley`` (fastai/callback/schedule.py), off-by-one start included: the first num_it // 10 points
    dropped, halfway along the longest decreasing run; cut at the first NaN."""
    from _panel_peers import fastai_valley

    lrs = [10.0 ** (-7 + i / 10) for i in range(17)]
    losses = [9.0] * 10 + [5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0]
    assert fastai_valley(lrs, losses) == lrs[10]  # run 10..14: max_start = 14 - 5 - 10 = -1, idx -1 + 1 + 0
    losses = [9.0] * 10 + [5.0, 4.8, 4.6, 4.4, 4.2, 4.0, 3.8, 3.6, 3.4, 3.2, 3.0, 2.8, 9.0]
    lrs = [10.0 ** (-7 + i / 10) for i in range(len(losses))]
    assert fastai_valley(lrs, losses) == lrs[10 + 5]  # run of 12: max_start -1, sections 4: idx -1 + 4 + 2
    assert fastai_valley(lrs, losses[:12] + [float("nan")] * 11) == lrs[11]  # cut at the NaN: [5.0, 4.8]


def test_schedule_free_eval_recomputes_batchnorm_at_the_averaged_weights() -> None:
    """The README's BatchNorm fix: after ``optimizer.eval()``, the running statistics are those of forward passes
    at the averaged weights x (not of the training iterate y), and the global RNG (the data order) is untouched."""
    import schedulefree
    import torch
    from _panel_peers import schedule_free_eval
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, momentum=1.0), nn.ReLU(), nn.Linear(8, 2))
    opt = schedulefree.SGDScheduleFree(net.parameters(), lr=0.5, warmup_steps=2)
    x, y = torch.randn(256, 4), torch.randint(0, 2, (256,))
    opt.train()
    for k in range(0, 256, 32):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[k: k + 32]), y[k: k + 32]).backward()
        opt.step()
    last = x[torch.randperm(256, generator=torch.Generator().manual_seed(10_000))[224:]]  # its last batch
    with torch.no_grad():
        at_y = net[0](last).mean(0)
    rng = torch.get_rng_state()
    schedule_free_eval(net, opt, (x, y), 32, seed=0)
    assert torch.equal(torch.get_rng_state(), rng) and not opt.param_groups[0]["train_mode"]
    with torch.no_grad():  # momentum=1: the running mean is the last forwarded batch's, at the averaged weights x
        at_x = net[0](last).mean(0)
    assert (at_x - at_y).abs().max() > 1e-3  # x and y differ
    assert torch.allclose(net[1].running_mean, at_x, atol=1e-6)
