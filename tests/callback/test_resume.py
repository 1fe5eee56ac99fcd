"""Resume rules and hostile checkpoints, with real checkpoint files and a real Trainer.

Rules under test (README, "Resume"): a setting left at its default takes the checkpoint's value; an explicit
setting that differs takes effect from the resumed step on, with a warning naming it and both values; a
checkpoint's `scale_fn` path is never imported; a bad state fails with a ValueError naming the key before
any training step.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import LRRecorder, StopAt, TinyModel, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_clr import CyclicLearningRate, cyclic_lr

STOP = 7  # mid-epoch (5 batches per epoch)
END = 15


def tenth(cycle: float) -> float:
    return 0.1


class Counting(TinyModel):
    calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        Counting.calls += 1
        return super().training_step(batch, batch_idx)


def fit(tmp: Path, clr: CyclicLearningRate, max_steps: int, ckpt_path: Any = None, save_at: int = 0) -> LRRecorder:
    pl.seed_everything(3)
    rec = LRRecorder()
    callbacks: list[Any] = [clr, rec]
    if save_at:  # a preempted job: checkpointed and stopped at `save_at`, same settings and run length
        callbacks += [ModelCheckpoint(dirpath=tmp, every_n_train_steps=save_at, save_top_k=-1), StopAt(save_at)]
    t = trainer(callbacks=callbacks, max_steps=max_steps, max_epochs=-1, enable_checkpointing=bool(save_at))
    t.fit(Counting(momentum=0.9), loader(n=40, shuffle=False), ckpt_path=ckpt_path)
    return rec


def checkpoint(tmp: Path, **kwargs: Any) -> Path:
    fit(tmp, CyclicLearningRate(**kwargs), END, save_at=STOP)
    return next(tmp.glob(f"*step={STOP}.ckpt"))


def tamper(path: Path, out: Path, edit: Any) -> Path:
    ckpt = torch.load(path, weights_only=True)  # the state is plain data: safe loading reads it
    edit(ckpt["callbacks"]["CyclicLearningRate"])
    torch.save(ckpt, out)
    return out


def lrs(rec: LRRecorder) -> list[float]:
    return [row[0] for row in rec.lrs]


# ------------------------------------------------------------------ defaults come from the checkpoint
def test_defaults_take_the_checkpoints_mode_bounds_and_cycle(tmp_path):
    kwargs = dict(base_lr=0.001, max_lr=0.01, step_size_up=3, mode="triangular2")
    full = fit(tmp_path / "full", CyclicLearningRate(**kwargs), END)
    ckpt = checkpoint(tmp_path / "a", **kwargs)
    resumed = fit(tmp_path / "b", CyclicLearningRate(), END, ckpt_path=ckpt)  # every setting at its default
    assert lrs(resumed) == lrs(full)[STOP:]  # triangular2 goes on, bitwise


def test_explicit_settings_take_effect_from_the_resumed_step_with_a_warning(tmp_path):
    ckpt = checkpoint(tmp_path / "a", base_lr=0.001, max_lr=0.01, step_size_up=3, mode="triangular2")
    new = dict(base_lr=0.002, max_lr=0.5, step_size_up=7)
    with pytest.warns(UserWarning) as record:
        resumed = fit(tmp_path / "b", CyclicLearningRate(**new), END, ckpt_path=ckpt)
    text = "\n".join(str(w.message) for w in record)
    for name, old, value in (("base_lr", 0.001, 0.002), ("max_lr", 0.01, 0.5), ("step_size_up", 3, 7),
                             ("step_size_down", 3, 7)):
        assert f"`{name}`: the checkpoint has {old}, the callback was given {value}" in text
    # mode: the checkpoint's; no tail: the checkpoint's bounds were given, so its schedule is torch's
    expected = [cyclic_lr(k, mode="triangular2", **new) for k in range(STOP, END)]
    assert lrs(resumed) == expected


def test_explicit_settings_equal_to_the_checkpoint_say_nothing(tmp_path, recwarn):
    kwargs = dict(base_lr=0.001, max_lr=0.01, step_size_up=3)
    ckpt = checkpoint(tmp_path / "a", **kwargs)
    fit(tmp_path / "b", CyclicLearningRate(**kwargs), END, ckpt_path=ckpt)
    assert not [w for w in recwarn if "on resume" in str(w.message)]


def test_range_test_does_not_run_again_on_resume(tmp_path):
    from lightning_clr import RangeTestConfig

    config = RangeTestConfig(num_steps=20, save=False, progress_bar=False)
    clr = CyclicLearningRate(range_test=config, step_size_up=3)
    fit(tmp_path / "a", clr, STOP + 2, save_at=STOP)
    ckpt = next((tmp_path / "a").glob(f"*step={STOP}.ckpt"))
    Counting.calls = 0
    again = CyclicLearningRate(range_test=config, step_size_up=3)
    fit(tmp_path / "b", again, STOP + 2, ckpt_path=ckpt)
    assert Counting.calls == 2  # two training steps, no sweep step
    assert (again.base_lr, again.max_lr) == (clr.base_lr, clr.max_lr)
    assert again.range_test_result.to_dict() == clr.range_test_result.to_dict()


# ------------------------------------------------------------------ no code from a checkpoint
def test_a_checkpoint_scale_fn_path_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    module = tmp_path / "mods" / "evil_scale_xyz.py"
    module.parent.mkdir()
    module.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef f(x):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(module.parent))
    ckpt = checkpoint(tmp_path / "a", base_lr=0.01, max_lr=0.1, step_size_up=2, scale_fn=f"{__name__}:tenth")

    def point_at(path: str) -> Any:
        def edit(state: dict) -> None:
            state["plan"]["scale_fn_path"] = path
        return edit

    for i, path in enumerate(("os:close", "evil_scale_xyz:f")):
        bad = tamper(ckpt, tmp_path / f"bad{i}.ckpt", point_at(path))
        Counting.calls = 0
        advice = r"custom `scale_fn`.*never imports code: pass the same function again"
        with pytest.raises(ValueError, match=advice) as info:
            fit(tmp_path / "b", CyclicLearningRate(), END, ckpt_path=bad)
        assert f"scale_fn={path!r}" not in str(info.value)  # the checkpoint's string is never offered as advice
        assert Counting.calls == 0
        os.fstat(2)  # stderr is still open: os.close was not called
        assert not marker.exists() and "evil_scale_xyz" not in sys.modules

    # The user's own function is used; the checkpoint's differing path is reported, never imported.
    with pytest.warns(UserWarning, match=r"`scale_fn`: the checkpoint has 'evil_scale_xyz:f'"):
        resumed = fit(tmp_path / "c", CyclicLearningRate(scale_fn=tenth), END, ckpt_path=bad)
    assert not marker.exists()
    assert lrs(resumed) == [cyclic_lr(k, base_lr=0.01, max_lr=0.1, step_size_up=2, scale_fn=tenth)
                            for k in range(STOP, END)]


def test_the_same_scale_fn_passed_again_resumes_silently(tmp_path, recwarn):
    ckpt = checkpoint(tmp_path / "a", base_lr=0.01, max_lr=0.1, step_size_up=2, scale_fn=tenth)
    fit(tmp_path / "b", CyclicLearningRate(scale_fn=tenth), END, ckpt_path=ckpt)
    assert not [w for w in recwarn if "scale_fn" in str(w.message)]


# ------------------------------------------------------------------ tampered state: named, before any step
def _set(key: str, value: Any) -> Any:
    def edit(state: dict) -> None:
        target, _, name = key.rpartition(".")
        (state[target] if target else state)[name] = value
    return edit


def _drop(key: str) -> Any:
    def edit(state: dict) -> None:
        target, _, name = key.rpartition(".")
        del (state[target] if target else state)[name]
    return edit


@pytest.mark.parametrize(
    "edit, key",
    [
        (_set("plan.base_lr", [math.nan]), "plan.base_lr[0]"),
        (_set("plan.max_lr", [-0.1]), "plan.max_lr[0]"),
        (_set("plan.max_lr", [0.0001]), "plan.max_lr[0]"),  # below base_lr
        (_set("plan.max_lr", [math.inf]), "plan.max_lr[0]"),
        (_set("plan.step_size_up", 0), "plan.step_size_up"),
        (_set("plan.step_size_down", 2.5), "plan.step_size_down"),
        (_set("steps", [-4]), "steps[0]"),
        (_set("steps", [1, 2]), "steps"),
        (_set("plan.mode", "evil"), "plan.mode"),
        (_set("plan.gamma", 7.0), "plan.gamma"),
        (_set("plan.group_counts", [3]), "plan.base_lr"),  # 3 groups but 1 bound
        (_set("plan.group_counts", [0]), "plan.group_counts[0]"),
        (_set("version", 99), "version"),
        (_drop("plan.step_size_up"), "plan.step_size_up"),
        (_drop("steps"), "steps"),
        (_set("plan.sneaky", 1), "plan.sneaky"),
    ],
)
def test_a_tampered_checkpoint_fails_naming_the_key_before_any_step(tmp_path, edit, key):
    ckpt = checkpoint(tmp_path / "a", base_lr=0.001, max_lr=0.01, step_size_up=3)
    bad = tamper(ckpt, tmp_path / "bad.ckpt", edit)
    Counting.calls = 0
    match = rf"state is invalid: `{key.replace('[', '[[]')}` must be"
    with pytest.raises(ValueError, match=match):
        fit(tmp_path / "b", CyclicLearningRate(), END, ckpt_path=bad)
    assert Counting.calls == 0


def test_a_first_release_checkpoint_state_still_resumes(tmp_path):
    # The first release had no annealing tail: its state resumes without one, whatever today's default.
    kwargs = dict(base_lr=0.001, max_lr=0.01, step_size_up=3, mode="triangular2", final_lr_ratio=1.0)
    full = fit(tmp_path / "full", CyclicLearningRate(**kwargs), END)
    ckpt = checkpoint(tmp_path / "a", **kwargs)

    def to_v1(state: dict) -> None:
        plan = state.pop("plan")
        state.update(version=1, base_lr=plan["base_lr"], max_lr=plan["max_lr"], step_size_up=3, step_size_down=3,
                     steps_per_epoch=5, mode="triangular2", gamma=1.0, scale_fn=None, range_test=None)

    old = tamper(ckpt, tmp_path / "v1.ckpt", to_v1)
    assert lrs(fit(tmp_path / "b", CyclicLearningRate(), END, ckpt_path=old)) == lrs(full)[STOP:]
