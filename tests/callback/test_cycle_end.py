"""CycleEndCheckpoint and CycleEndEarlyStopping through a real Trainer: they act at the CLR's cycle ends only.

The fits: TinyModel on SameTaskData (64 training samples, batches of 8: 8 optimizer steps per epoch), validated
once per epoch on its own 32 samples. With ``half_cycle_epochs=2`` a cycle is 32 steps (4 epochs) and 12
epochs are 3 cycles; with ``max_lr=0.2`` the validation loss rises in the middle of each cycle and is lower at
each cycle end than at the one before (measured here, and asserted where a test relies on it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import pytest
import torch
from helpers import SameTaskData, StopAt, TinyModel, trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from processes import ROOT, clean_env

from lightning_clr import ArgumentError, CycleEndCheckpoint, CycleEndEarlyStopping, CyclicLearningRate

STEPS_PER_EPOCH = 8
CYCLE = 32  # half_cycle_epochs=2 -> 16 + 16 steps
EPOCHS = 12


class ValLosses(Callback):
    """``{global_step: val_loss}`` of every validation (sanity checks left out)."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.at[trainer.global_step] = float(trainer.callback_metrics["val_loss"])


def clr(**kwargs: Any) -> CyclicLearningRate:
    settings: dict[str, Any] = dict(base_lr=0.01, max_lr=0.2, half_cycle_epochs=2, final_lr_ratio=1.0)
    settings.update(kwargs)
    return CyclicLearningRate(**settings)


def fit(callbacks: list[Any], ckpt_path: Optional[str] = None, **trainer_kwargs: Any) -> pl.Trainer:
    pl.seed_everything(0)
    kwargs: dict[str, Any] = dict(max_epochs=EPOCHS, num_sanity_val_steps=0, callbacks=callbacks)
    if any(isinstance(c, ModelCheckpoint) for c in callbacks):
        kwargs["enable_checkpointing"] = True
    kwargs.update(trainer_kwargs)
    t = trainer(**kwargs)
    t.fit(TinyModel(), datamodule=SameTaskData(), ckpt_path=ckpt_path)
    return t


def saved(folder: Path) -> list[tuple[int, int]]:
    """(cycle, step) of each checkpoint file in ``folder``, in step order."""
    names = [p.name for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]
    found = [re.fullmatch(r"cycle=(\d+)-epoch=\d+-step=(\d+)\.ckpt", n) for n in names]
    assert all(found), names
    return sorted(((int(m[1]), int(m[2])) for m in found if m), key=lambda cs: cs[1])


def messages(record: list[warnings.WarningMessage], text: str) -> list[str]:
    return [str(w.message) for w in record if text in str(w.message)]


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_at_every_cycle_end_and_nowhere_else(tmp_path: Path) -> None:
    ckpt = CycleEndCheckpoint(dirpath=str(tmp_path))
    t = fit([clr(), ckpt])
    assert t.global_step == EPOCHS * STEPS_PER_EPOCH
    assert saved(tmp_path) == [(1, CYCLE), (2, 2 * CYCLE), (3, 3 * CYCLE)]
    assert ckpt.cycles_judged == 3
    state = torch.load(tmp_path / f"cycle=2-epoch=7-step={2 * CYCLE}.ckpt", weights_only=False)
    assert state["global_step"] == 2 * CYCLE
    assert state["callbacks"]["CyclicLearningRate"]["steps"] == [2 * CYCLE]  # the LR is back at base_lr there


def test_keeps_the_best_k_cycle_ends_by_the_metric(tmp_path: Path) -> None:
    losses = ValLosses()
    ckpt = CycleEndCheckpoint(dirpath=str(tmp_path), monitor="val_loss", save_top_k=2)
    fit([clr(max_lr=0.15), ckpt, losses])  # 0.15: cycle 2 ends worse than cycle 1
    ends = {step: losses.at[step] for step in (CYCLE, 2 * CYCLE, 3 * CYCLE)}
    best_two = sorted(sorted(ends, key=ends.__getitem__)[:2])
    assert best_two != [2 * CYCLE, 3 * CYCLE], "the setup must tell the best two from the latest two"
    assert [step for _, step in saved(tmp_path)] == best_two
    assert Path(ckpt.best_model_path).name.endswith(f"step={min(ends, key=ends.__getitem__)}.ckpt")
    assert float(ckpt.best_model_score) == pytest.approx(min(ends.values()))
    # the mid-cycle validations were never candidates, even where they beat a kept cycle end
    assert set(losses.at) - set(ends)


def test_cycle_end_mid_epoch_is_judged_at_the_next_validation_with_one_warning(tmp_path: Path) -> None:
    """Cycles of 6 steps, epochs of 8: validations (epoch ends) come at steps 8, 16, 24; cycles end at 6, 12,
    18, 24. Each validation judges the latest cycle that ended before it (18 and 24 are judged once, as 24)."""
    ckpt = CycleEndCheckpoint(dirpath=str(tmp_path), monitor="val_loss")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit([clr(step_size_up=3, step_size_down=3), ckpt], max_epochs=3)
    assert saved(tmp_path) == [(1, 8), (2, 16), (4, 24)]
    lag = messages(record, "first validation after it")
    assert len(lag) == 1 and "cycle 1 ended at optimizer step 6" in lag[0] and "step 8" in lag[0]


def test_cycle_end_no_validation_followed_is_saved_at_the_end_of_the_fit(tmp_path: Path) -> None:
    """max_steps=12 ends the fit at the end of cycle 2, mid-epoch: no validation comes after it."""
    ckpt = CycleEndCheckpoint(dirpath=str(tmp_path))
    fit([clr(step_size_up=3, step_size_down=3), ckpt], max_epochs=None, max_steps=12)
    assert saved(tmp_path) == [(1, 8), (2, 12)]


def test_validation_at_the_cycle_ends_judges_them_exactly(tmp_path: Path) -> None:
    ckpt = CycleEndCheckpoint(dirpath=str(tmp_path), monitor="val_loss")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit([clr(step_size_up=3, step_size_down=3), ckpt], max_epochs=3, val_check_interval=6,
            check_val_every_n_epoch=None)
    assert saved(tmp_path) == [(1, 6), (2, 12), (3, 18), (4, 24)]
    assert not messages(record, "first validation after it")


def test_without_validation_saves_right_at_the_cycle_end_step(tmp_path: Path) -> None:
    ckpt = CycleEndCheckpoint(dirpath=str(tmp_path), save_top_k=-1)
    fit([clr(step_size_up=3, step_size_down=2), ckpt], max_epochs=2, limit_val_batches=0)
    assert saved(tmp_path) == [(1, 5), (2, 10), (3, 15)]


def test_resumed_fit_ranks_old_and_new_cycle_ends_together(tmp_path: Path) -> None:
    """Preempted in cycle 2 (step 52), resumed from the epoch-end checkpoint of step 48: the cycle-end
    callbacks' state comes back, so cycle 1 is not judged again (a fresh state would save the mid-cycle step 56
    as cycle 1) and the best 2 are chosen among all three cycle ends, before and after the resume."""
    all_dir, best_dir, epoch_dir = tmp_path / "all", tmp_path / "best", tmp_path / "epochs"
    first, second = ValLosses(), ValLosses()

    def cycle_checkpoints() -> list[CycleEndCheckpoint]:  # two states in one checkpoint: distinct state keys
        return [CycleEndCheckpoint(dirpath=str(all_dir)),
                CycleEndCheckpoint(dirpath=str(best_dir), monitor="val_loss", save_top_k=2)]

    epoch_ckpt = ModelCheckpoint(dirpath=str(epoch_dir), save_top_k=-1, filename="{step}")
    fit([clr(max_lr=0.15), *cycle_checkpoints(), epoch_ckpt, first, StopAt(52)])
    assert saved(all_dir) == saved(best_dir) == [(1, CYCLE)]
    resumed = cycle_checkpoints()
    fit([clr(max_lr=0.15), *resumed, second], ckpt_path=str(epoch_dir / "step=48.ckpt"))
    assert saved(all_dir) == [(1, CYCLE), (2, 2 * CYCLE), (3, 3 * CYCLE)]
    assert [c.cycles_judged for c in resumed] == [3, 3]
    ends = {CYCLE: first.at[CYCLE], 2 * CYCLE: second.at[2 * CYCLE], 3 * CYCLE: second.at[3 * CYCLE]}
    best_two = sorted(sorted(ends, key=ends.__getitem__)[:2])
    assert [s for _, s in saved(best_dir)] == best_two
    assert Path(resumed[1].best_model_path).name.endswith(f"step={min(ends, key=ends.__getitem__)}.ckpt")


# ---------------------------------------------------------------------------------------------- early stopping
def test_lightning_early_stopping_stops_mid_cycle_and_warns_once() -> None:
    """The trap this module exists for, on this setup: Lightning's EarlyStopping(patience=1) stops at a
    validation that is no cycle end, and the callback says so once."""
    stop = EarlyStopping(monitor="val_loss", patience=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t = fit([clr(), stop])
    assert t.global_step < EPOCHS * STEPS_PER_EPOCH and t.global_step % CYCLE != 0
    found = messages(record, "CycleEndEarlyStopping")
    assert len(found) == 1 and "EarlyStopping(monitor='val_loss', patience=1)" in found[0]


def test_cycle_end_early_stopping_is_not_fooled_by_the_rising_half() -> None:
    losses = ValLosses()
    stop = CycleEndEarlyStopping(monitor="val_loss", patience=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t = fit([clr(), stop, losses])
    steps = sorted(losses.at)
    rises = [s for a, s in zip(steps, steps[1:]) if losses.at[s] > losses.at[a]]
    assert rises and all(s % CYCLE for s in rises), "mid-cycle rises, none at a cycle end"
    assert t.global_step == EPOCHS * STEPS_PER_EPOCH and stop.stopped_cycle is None
    assert stop.cycles_judged == 3 and stop.wait_count == 0
    assert float(stop.best_score) == pytest.approx(losses.at[3 * CYCLE])
    assert not messages(record, "CycleEndEarlyStopping")


def test_cycle_end_early_stopping_stops_at_a_cycle_end() -> None:
    stop = CycleEndEarlyStopping(monitor="val_loss", patience=1, min_delta=1e9)  # no cycle end can improve
    t = fit([clr(), stop])
    assert (stop.stopped_cycle, stop.stopped_step, t.global_step) == (2, 2 * CYCLE, 2 * CYCLE)


def test_early_stopping_state_survives_a_resume(tmp_path: Path) -> None:
    """Resumed after cycle 1 was judged: the best value and the judged cycles come back, so cycle 2 is the
    first non-improving cycle end (a fresh state would take cycle 2 as its first best and stop at cycle 3)."""
    epoch_ckpt = ModelCheckpoint(dirpath=str(tmp_path), save_top_k=-1, filename="{step}")
    fit([clr(), CycleEndEarlyStopping(monitor="val_loss", min_delta=1e9), epoch_ckpt, StopAt(52)])
    stop = CycleEndEarlyStopping(monitor="val_loss", min_delta=1e9)
    t = fit([clr(), stop], ckpt_path=str(tmp_path / "step=48.ckpt"))
    assert (stop.stopped_cycle, t.global_step) == (2, 2 * CYCLE)


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("make", [
    lambda: CycleEndCheckpoint(monitor="val_loss"),
    lambda: CycleEndEarlyStopping(monitor="val_loss"),
])
def test_without_cyclic_learning_rate_fails_before_any_step(tmp_path: Path, make: Any) -> None:
    model = TinyModel()
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(max_epochs=1, callbacks=[make()], enable_checkpointing=True, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"needs exactly one in the Trainer's callbacks, found 0.*CyclicLearningRate"):
        t.fit(model, datamodule=SameTaskData())
    assert t.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(("make", "argument"), [
    (lambda: CycleEndCheckpoint(save_top_k=0), "save_top_k"),
    (lambda: CycleEndCheckpoint(save_top_k=-2), "save_top_k"),
    (lambda: CycleEndCheckpoint(save_top_k=3), "save_top_k"),  # best 3 of what, without a monitor?
    (lambda: CycleEndCheckpoint(monitor="val_loss", save_top_k=2.5), "save_top_k"),
    (lambda: CycleEndCheckpoint(monitor=""), "monitor"),
    (lambda: CycleEndCheckpoint(mode="lowest"), "mode"),
    (lambda: CycleEndCheckpoint(dirpath=3), "dirpath"),
    (lambda: CycleEndCheckpoint(filename=""), "filename"),
    (lambda: CycleEndCheckpoint(save_last="yes"), "save_last"),
    (lambda: CycleEndEarlyStopping(monitor=None), "monitor"),
    (lambda: CycleEndEarlyStopping(monitor="val_loss", patience=0), "patience"),
    (lambda: CycleEndEarlyStopping(monitor="val_loss", min_delta=-0.1), "min_delta"),
    (lambda: CycleEndEarlyStopping(monitor="val_loss", min_delta=float("nan")), "min_delta"),
    (lambda: CycleEndEarlyStopping(monitor="val_loss", mode="up"), "mode"),
    (lambda: CycleEndEarlyStopping(monitor="val_loss", stopping_threshold=float("inf")), "stopping_threshold"),
    (lambda: CycleEndEarlyStopping(monitor="val_loss", divergence_threshold="big"), "divergence_threshold"),
])
def test_bad_arguments_name_themselves(make: Any, argument: str) -> None:
    with pytest.raises(ArgumentError) as err:
        make()
    assert err.value.argument == argument and f"`{argument}`" in str(err.value)


def test_bad_cycle_state_in_a_checkpoint_is_refused_naming_it() -> None:
    ckpt = CycleEndCheckpoint()
    with pytest.raises(ValueError, match=r"CycleEndCheckpoint state is invalid: `cycles_judged`"):
        ckpt.load_state_dict({"cycles_judged": "__import__('os')"})


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_ranks_stop_at_the_same_cycle_end_and_rank_zero_writes(tmp_path: Path) -> None:
    """2 gloo ranks (tests/scripts/ddp_cycle_end.py): 4 steps per epoch and rank, cycles of 8 steps. Rank 1
    alone wants to stop at cycle 2; both ranks stop there, and the files are in rank 0's folder only."""
    script = ROOT / "tests" / "scripts" / "ddp_cycle_end.py"
    proc = subprocess.Popen([sys.executable, str(script), "--out", str(tmp_path)], env=clean_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=150)[0]
    except subprocess.TimeoutExpired:
        output = "timed out after 150 s (a rank left waiting in a collective?)"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the ranks it started, nothing else
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, output[-6000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    cycle = reports[0]["cycle_length"]
    assert cycle == 8
    for report in reports:
        assert (report["stopped_cycle"], report["stopped_step"], report["global_step"]) == (2, 2 * cycle, 2 * cycle)
        assert report["cycles_judged"] == [2, 2]
        assert report["dirpath"] == str(tmp_path / "ckpt_rank0")  # rank 0's folder, on every rank
    if reports[1]["stopping_reason"] is not None:  # EarlyStopping.stopping_reason: newer than the Lightning floor
        assert reports[1]["stopping_reason"] == "PATIENCE_EXHAUSTED"
        assert reports[0]["stopping_reason"] == "NOT_STOPPED"  # rank 0 stopped on rank 1's word
    assert saved(tmp_path / "ckpt_rank0") == [(1, cycle), (2, 2 * cycle)]
    assert not (tmp_path / "ckpt_rank1").exists()
    assert reports[0]["best_k_models"] == reports[1]["best_k_models"] == sorted(
        p.name for p in (tmp_path / "ckpt_rank0").glob("*.ckpt"))
