"""The cycle-end callbacks from LightningCLI flags, in a real subprocess of examples/cli.py (a plain LightningCLI)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from processes import ROOT, clean_env

pytestmark = [pytest.mark.slow]


def test_cycle_end_callbacks_from_flags(tmp_path: Path) -> None:
    """Each ``--trainer.callbacks.<arg>`` sets the callback added last by ``--trainer.callbacks+=``. Digits: 6
    steps per epoch, a cycle of 12 steps (2 epochs), 4 epochs: cycle ends at steps 12 and 24."""
    ckpt_dir = tmp_path / "cycle_ends"
    argv = [
        sys.executable, str(ROOT / "examples" / "cli.py"), "fit",
        "--trainer.max_epochs=4", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.logger=false",
        "--trainer.callbacks+=lightning_clr.CyclicLearningRate", "--trainer.callbacks.base_lr=0.01",
        "--trainer.callbacks.max_lr=0.1", "--trainer.callbacks.half_cycle_epochs=1",
        "--trainer.callbacks+=lightning_clr.CycleEndCheckpoint", "--trainer.callbacks.monitor=val_loss",
        f"--trainer.callbacks.dirpath={ckpt_dir}",
        "--trainer.callbacks+=lightning_clr.CycleEndEarlyStopping", "--trainer.callbacks.monitor=val_loss",
        "--trainer.callbacks.patience=2",
    ]
    proc = subprocess.run(argv, cwd=tmp_path, env=clean_env(PYTHONWARNINGS="ignore::DeprecationWarning"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-5000:]
    names = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
    assert names == ["cycle=1-epoch=1-step=12.ckpt", "cycle=2-epoch=3-step=24.ckpt"]
    assert "stopped: `max_epochs=4` reached" in proc.stdout + proc.stderr  # patience 2: no early stop


def test_bad_cycle_end_flag_fails_before_training(tmp_path: Path) -> None:
    argv = [
        sys.executable, str(ROOT / "examples" / "cli.py"), "fit", "--trainer.max_epochs=1",
        "--trainer.logger=false", "--trainer.callbacks+=lightning_clr.CyclicLearningRate",
        "--trainer.callbacks+=lightning_clr.CycleEndCheckpoint", "--trainer.callbacks.save_top_k=0",
    ]
    proc = subprocess.run(argv, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert re.search(r"`save_top_k` must be -1 \(every cycle end\) or >= 1", proc.stderr), proc.stderr[-3000:]
    assert "Epoch 0" not in proc.stdout + proc.stderr
