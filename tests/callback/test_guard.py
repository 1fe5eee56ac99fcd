"""The divergence guard through real fits: a range test read on the cliff is caught and recovered, a fit that
never diverges is untouched, a resumed fit continues exactly, a fit that diverges at any LR stops with a clear
error in its last good state, and the guard acts per optimizer step (gradient accumulation, manual optimization).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import LRRecorder, StopAt, TinyModel, loader, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from processes import clean_env
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_clr import CyclicLearningRate, DivergenceError, DivergenceGuard, RangeTestConfig, cyclic_lr

GUARD_LOG = "lightning.pytorch.utilities.rank_zero"
ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"


# ------------------------------------------------------------------ issue 19: a range test read on the cliff
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's digits, standardized per pixel; 1347 training and 450 test images."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[450:]], y[perm[450:]], x[perm[:450]], y[perm[:450]]


class DigitsMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def digits_fit(seed: int, guard: DivergenceGuard, max_epochs: int) -> tuple[CyclicLearningRate, float]:
    x, y, test_x, test_y = digits()
    pl.seed_everything(seed)
    model = DigitsMLP()
    clr = CyclicLearningRate(guard=guard, range_test=RangeTestConfig(save=False, progress_bar=False))
    t = trainer(callbacks=[clr], max_epochs=max_epochs)
    t.fit(model, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    return clr, accuracy


@pytest.mark.slow  # two 4-epoch fits at batch 8: about 70 s of CPU
@pytest.mark.timeout(600)
def test_a_max_lr_read_on_the_cliff_is_caught_and_recovered_within_one_cycle():
    """Digits, batches of 8, SGD with momentum 0.9, every default: on seed 2 the range test reads max_lr 0.20,
    past the cliff. Without the guard the loss blows up and stays there; with it, the fit is rolled back and
    goes on with lower bounds, within the first cycle, and ends where a good LR ends."""
    off, off_accuracy = digits_fit(2, DivergenceGuard(enabled=False), max_epochs=4)
    on, on_accuracy = digits_fit(2, DivergenceGuard(), max_epochs=4)
    assert on.range_test_result.max_lr == off.range_test_result.max_lr > 0.15  # the same reading, on the cliff
    assert off.plan.interventions == ()
    steps = [record["step"] for record in on.plan.interventions]
    assert 1 <= len(steps) <= 2 and max(steps) < on.plan.cycle_length, on.plan.interventions
    assert on.plan.lr_scale == 0.5 ** len(steps)
    assert on.max_lr == pytest.approx(off.max_lr * on.plan.lr_scale)  # the lowered bounds kept to the end
    assert on.base_lr == pytest.approx(off.base_lr * on.plan.lr_scale)
    assert on_accuracy > 0.93 and on_accuracy > off_accuracy + 0.03, (on_accuracy, off_accuracy)


# ------------------------------------------------------------------ a fit that never diverges
def test_a_fit_that_never_diverges_is_bitwise_the_same_with_the_guard_on_and_off():
    results = []
    for guard in (DivergenceGuard(), DivergenceGuard(enabled=False)):
        pl.seed_everything(0)
        model = TinyModel()
        sweep = RangeTestConfig(min_lr=1e-4, max_lr=0.1, num_steps=20, save=False, progress_bar=False)
        clr = CyclicLearningRate(guard=guard, range_test=sweep)
        rec = LRRecorder()
        trainer(callbacks=[clr, rec], max_epochs=6).fit(model, loader(n=64, shuffle=True))
        results.append((clr, rec.lrs, [p.detach().clone() for p in model.parameters()]))
    (on, lrs_on, weights_on), (off, lrs_off, weights_off) = results
    assert on.range_test_result is not None and on._guard is not None and off._guard is None
    assert on._guard.rule.start is not None  # it judged windows
    assert on.plan.interventions == () and lrs_on == lrs_off
    assert all(torch.equal(a, b) for a, b in zip(weights_on, weights_off))


def test_explicit_bounds_are_not_watched_unless_asked(caplog):
    with caplog.at_level(logging.INFO, logger=GUARD_LOG):
        clr = CyclicLearningRate(base_lr=0.01, max_lr=0.05, step_size_up=4)
        trainer(callbacks=[clr], max_steps=8).fit(TinyModel(), loader())
    assert clr._guard is None and "divergence guard on" not in caplog.text


# ------------------------------------------------------------------ explicit bounds past the cliff
TOO_HIGH = dict(base_lr=0.01, max_lr=1.0, step_size_up=8, final_lr_ratio=1.0)  # plain SGD: blows up above ~0.3


def guarded(tmp: Path, max_steps: int, ckpt_path: Any = None, save_at: int = 0, **guard: Any) -> tuple[Any, ...]:
    pl.seed_everything(0)
    clr = CyclicLearningRate(**TOO_HIGH, guard=DivergenceGuard(enabled=True, check_every=4, **guard))
    rec = LRRecorder()
    callbacks: list[Any] = [clr, rec]
    if save_at:
        callbacks += [ModelCheckpoint(dirpath=tmp, every_n_train_steps=save_at, save_top_k=-1), StopAt(save_at)]
    t = trainer(callbacks=callbacks, max_steps=max_steps, max_epochs=-1, enable_checkpointing=bool(save_at),
                logger=CSVLogger(tmp, name="log"))
    model = TinyModel()
    t.fit(model, loader(n=64), ckpt_path=ckpt_path)  # no shuffle: a resumed fit sees the same batches
    return clr, rec, model, t


def test_every_intervention_is_logged_once_and_lowers_both_bounds(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=GUARD_LOG):
        clr, rec, model, t = guarded(tmp_path, 64)
    records = clr.plan.interventions
    assert len(records) == 2 and [r["lr_scale"] for r in records] == [0.5, 0.25]
    lines = [m for m in caplog.messages if m.startswith("CyclicLearningRate guard:")]
    assert len(lines) == 2 and "max_lr 1 -> 0.5, base_lr 0.01 -> 0.005" in lines[0]
    # From the step after each back-off on, the LR is the schedule of the lowered bounds.
    scale = [1.0 if s < records[0]["step"] else 0.5 if s < records[1]["step"] else 0.25 for s in range(64)]
    expected = [cyclic_lr(s, base_lr=0.01 * k, max_lr=1.0 * k, step_size_up=8) for s, k in enumerate(scale)]
    assert [row[0] for row in rec.lrs] == pytest.approx(expected, rel=1e-12)
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())
    metrics = (Path(t.logger.log_dir) / "metrics.csv").read_text()
    header, *rows = metrics.splitlines()
    assert "clr_guard/new_max_lr" in header and "clr_guard/old_max_lr" in header
    logged = [dict(zip(header.split(","), row.split(","))) for row in rows]
    backoffs = [r for r in logged if r.get("clr_guard/new_max_lr")]
    assert [float(r["clr_guard/new_max_lr"]) for r in backoffs] == [0.5, 0.25]
    assert [int(float(r["clr_guard/step"])) for r in backoffs] == [r["step"] for r in records]


def test_a_resumed_fit_keeps_the_lowered_bounds_and_continues_exactly(tmp_path):
    full_clr, full, full_model, _ = guarded(tmp_path / "full", 64)
    first = full_clr.plan.interventions[0]["step"]
    cycle = full_clr.plan.cycle_length
    trough = (first // cycle + 1) * cycle
    # Mid-window, after the first back-off: the lowered bounds and the window in progress come back.
    guarded(tmp_path / "a", 64, save_at=first + 6)
    ckpt = next((tmp_path / "a").glob(f"*step={first + 6}.ckpt"))
    state = torch.load(ckpt, weights_only=True)["callbacks"]["CyclicLearningRate"]
    assert state["version"] == 3 and state["plan"]["lr_scale"] == 0.5 and len(state["guard"]["pending"]) == 2
    resumed_clr, resumed, _, _ = guarded(tmp_path / "b", 64, ckpt_path=ckpt)
    assert [(r["step"], r["lr_scale"]) for r in resumed_clr.plan.interventions] == [
        (r["step"], r["lr_scale"]) for r in full_clr.plan.interventions]  # the later back-off too, at its step
    assert [row[0] for row in resumed.lrs] == [row[0] for row in full.lrs][first + 6:]
    # At a trough, the good state kept in memory is the checkpoint's: the resumed fit is bitwise the same.
    guarded(tmp_path / "c", 64, save_at=trough)
    resumed_clr, resumed, model, _ = guarded(tmp_path / "d", 64, ckpt_path=next((tmp_path / "c").glob(
        f"*step={trough}.ckpt")))
    assert resumed_clr.plan.interventions == full_clr.plan.interventions
    assert [row[0] for row in resumed.lrs] == [row[0] for row in full.lrs][trough:]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), full_model.parameters()))


class Weights(Callback):
    """The model's weights after every optimizer step (put before the CLR callback)."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[torch.Tensor]] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.by_step[0] = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.by_step[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]


def test_a_fit_that_diverges_at_any_lr_stops_after_the_back_offs_in_its_last_good_state(tmp_path):
    """One corrupt sample (a NaN feature) makes the loss NaN once per epoch, whatever the LR: two back-offs,
    then a DivergenceError, and the model holds the weights of the last good trough."""
    x, y = loader(n=64).dataset.tensors
    x = x.clone()
    x[37, 2] = math.nan
    data = DataLoader(TensorDataset(x, y), batch_size=8)
    pl.seed_everything(0)
    weights = Weights()
    clr = CyclicLearningRate(base_lr=0.001, max_lr=0.01, step_size_up=2, final_lr_ratio=1.0,
                             guard=DivergenceGuard(enabled=True, check_every=2, max_backoffs=2))
    model = TinyModel()
    with pytest.raises(DivergenceError, match=r"after 2 back-off\(s\).*max_backoffs=2.*last good state"):
        trainer(callbacks=[weights, clr], max_epochs=10).fit(model, data)
    assert len(clr.plan.interventions) == 2 and "non-finite" in clr.plan.interventions[0]["reason"]
    final = [p.detach() for p in model.parameters()]
    assert all(torch.isfinite(p).all() for p in final)
    troughs = [s for s in weights.by_step if s % clr.plan.cycle_length == 0]
    assert any(all(torch.equal(a, b) for a, b in zip(final, weights.by_step[s])) for s in troughs)
    assert clr._writer is not None and not clr._writer._handles  # no hook left on the optimizer


# ------------------------------------------------------------------ per optimizer step
def test_under_gradient_accumulation_the_guard_counts_optimizer_steps(tmp_path):
    pl.seed_everything(0)
    clr = CyclicLearningRate(**TOO_HIGH, guard=DivergenceGuard(enabled=True, check_every=4))
    trainer(callbacks=[clr], max_steps=48, max_epochs=-1, accumulate_grad_batches=2).fit(
        TinyModel(), loader(n=64, shuffle=True))
    assert clr.plan.interventions and all(r["step"] % 4 == 0 for r in clr.plan.interventions)
    assert clr.steps == [48]


class Manual(TinyModel):
    def __init__(self, return_loss: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.return_loss = return_loss

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss if self.return_loss else None


@pytest.mark.parametrize("return_loss", [True, False])
def test_manual_optimization_is_watched_when_it_returns_the_loss(return_loss, caplog):
    pl.seed_everything(0)
    clr = CyclicLearningRate(**TOO_HIGH, guard=DivergenceGuard(enabled=True, check_every=4))
    with caplog.at_level(logging.INFO, logger=GUARD_LOG):
        trainer(callbacks=[clr], max_steps=40, max_epochs=-1).fit(Manual(return_loss), loader(n=64, shuffle=True))
    cannot = [m for m in caplog.messages if "cannot watch" in m]
    if return_loss:
        assert clr.plan.interventions and not cannot
    else:
        assert clr.plan.interventions == () and len(cannot) == 1


# ------------------------------------------------------------------ DDP: two gloo ranks, one rank's loss blows up
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_ranks_take_the_same_decision_at_the_same_step(tmp_path):
    """tests/scripts/guard_ddp.py: rank 1's reported loss is 1000x once the LR passes 0.05 (its gradient is the
    true one). Both ranks back off at the same step, from one all_reduce per check and none between checks."""
    reports = {}
    for name, extra in (("guard", []), ("off", ["--no-guard"])):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, str(SCRIPTS / "guard_ddp.py"), "--out", str(out), *extra],
                              env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        reports[name] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        reports[name + "_guard"] = [json.loads((out / f"guard{r}.json").read_text()) for r in range(2)]
    g0, g1 = reports["guard_guard"]
    assert g0 == g1 and len(g0["interventions"]) == 1 and g0["max_lr"] == 0.04
    step = g0["interventions"][0]["step"]
    r0, r1 = reports["guard"]
    assert r0["lrs"] == r1["lrs"] and r0["weights"] == r1["weights"] and r0["global_step"] == r1["global_step"]
    assert max(r0["lrs"][step:]) <= 0.04 < max(r0["lrs"][:step])
    assert max(loss for _, loss in r0["local_losses"]) < 100 < max(loss for _, loss in r1["local_losses"])
    assert reports["off_guard"][0]["interventions"] == []
    # The guard's collectives: one all_reduce per check (every 2 steps), none on the steps between.
    per_step = r0["collectives"]["per_step"]
    baseline = reports["off"][0]["collectives"]["per_step"]
    extra = [a - b for a, b in zip(per_step, baseline)]
    assert extra == [1 if (s + 1) % 2 == 0 else 0 for s in range(len(extra))]
    assert r0["collectives"]["training_by_name"].get("all_reduce", 0) - reports["off"][0]["collectives"][
        "training_by_name"].get("all_reduce", 0) == sum(extra)


# ------------------------------------------------------------------ the command line
def test_the_cli_sets_the_guard_and_names_a_bad_flag(tmp_path):
    args = [sys.executable, "-m", "lightning_clr.cli", "fit", "--model", "examples.digits.DigitsClassifier",
            "--data", "examples.digits.DigitsDataModule", "--trainer.max_epochs", "1"]
    env = clean_env()  # the repository on PYTHONPATH: examples.digits imports
    bad = subprocess.run([*args, "--clr.guard.check_every", "0"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0
    assert "--clr.guard.check_every: `guard.check_every` must be a whole number" in bad.stderr + bad.stdout
    shown = subprocess.run([*args, "--clr.guard.enabled", "false", "--clr.guard.backoff_factor", "0.25",
                            "--print_config"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "enabled: false" in shown.stdout and "backoff_factor: 0.25" in shown.stdout
