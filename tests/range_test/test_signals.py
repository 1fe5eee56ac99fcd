"""SIGTERM and KeyboardInterrupt during the range test: a real signal to a real fit in a subprocess, and a real
Trainer for Ctrl+C. The sweep stops at the next step, the model is restored, and the fit ends as Lightning ends
training."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyModel, loader, trainer
from lightning.pytorch.callbacks import Callback
from processes import ROOT, clean_env
from range_test_helpers import assert_same, cfg, full_state

from lightning_clr import CyclicLearningRate

SCRIPT = ROOT / "tests" / "scripts" / "range_test_signal.py"
PROMPT = 2.0  # seconds from the signal to the end of the fit (each step of the script's sweep sleeps 0.05 s)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / mode
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), mode], env=clean_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def _terminate_when_started(proc: subprocess.Popen, out: Path) -> tuple[float, float, str, int]:
    """Wait for the first training step, SIGTERM the process 0.5 s later; returns (signal time, seconds until the
    process ended, output, exit code)."""
    deadline = time.monotonic() + 90
    while not (out / "started").exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the fit never started"
        time.sleep(0.05)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"still running 30 s after SIGTERM: {output[-3000:]}")
    return sent, time.monotonic() - sent, output, proc.returncode


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_ends_the_sweep_and_the_fit_as_promptly_as_lightning_ends_training(tmp_path: Path) -> None:
    runs = {mode: _start(tmp_path, mode) for mode in ("sweep", "train")}  # both at once: they mostly sleep
    reports: dict[str, Any] = {}
    for mode, (proc, out) in runs.items():
        sent, ended, output, rc = _terminate_when_started(proc, out)
        assert (out / "report.json").exists(), output[-3000:]
        report = json.loads((out / "report.json").read_text())
        report.update(rc=rc, delay=report["at"] - sent, ended=ended)
        reports[mode] = report
    sweep, train = reports["sweep"], reports["train"]
    assert train["exception"] == "SIGTERMException" and train["delay"] < PROMPT  # Lightning's own reaction
    # the same end as Lightning's: its SIGTERMException, on_exception, the same status and exit code
    for key in ("exception", "status", "rc"):
        assert sweep[key] == train[key], (key, sweep, train)
    assert sweep["delay"] < PROMPT, sweep  # at the next step: not after the remaining ~1990 sweep steps
    # the process is gone soon after (its exit takes ~1-4 s here, as plain training's does); not ~100 s later
    assert sweep["ended"] < 20, (sweep, train)
    assert 0 < sweep["sweep_steps"] < 200 and sweep["real_steps"] == 0 and sweep["global_step"] == 0
    assert sweep["restored"], "on_exception saw the sweep's weights, not the restored ones"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_under_ddp_stops_every_rank_at_the_same_step_restored(tmp_path: Path) -> None:
    """Two gloo ranks (strategy="ddp"), SIGTERM to rank 0's process (Lightning forwards it to rank 1). Without the
    sweep's own handler, Lightning's in-handler broadcast hung both ranks in 2 of 5 runs here."""
    proc, out = _start(tmp_path, "ddp")
    sent, ended, output, rc = _terminate_when_started(proc, out)
    reports = []
    for name in ("report.json", "report1.json"):
        assert (out / name).exists(), output[-3000:]
        reports.append(json.loads((out / name).read_text()))
    assert ended < 30, ended  # Lightning's DDP teardown takes ~6 s here, for plain DDP training too
    assert rc == 0, output[-3000:]
    for r in reports:
        assert r["exception"] == "SIGTERMException" and r["status"] == "interrupted", r
        assert r["at"] - sent < PROMPT and r["restored"] and r["real_steps"] == 0, r
    assert reports[0]["sweep_steps"] == reports[1]["sweep_steps"] > 0  # the same step on both ranks


class Interrupting(TinyModel):
    """Raises KeyboardInterrupt (Ctrl+C) at the 5th training_step of the sweep."""

    def __init__(self) -> None:
        super().__init__(optimizer="adam", lr=0.01)
        self.calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        if self.calls == 5:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


class StateAround(Callback):
    """Full state at fit start (before the range test) and when Lightning handles the exception."""

    def on_train_start(self, tr: Any, model: Any) -> None:
        self.before = full_state(tr, model)

    def on_exception(self, tr: Any, model: Any, exception: BaseException) -> None:
        self.exception = exception
        self.after = full_state(tr, model)


def test_keyboard_interrupt_in_the_sweep_restores_the_model_bitwise() -> None:
    torch.manual_seed(0)
    model = Interrupting()
    around = StateAround()
    clr = CyclicLearningRate(range_test=cfg(num_steps=20))
    tr = trainer(callbacks=[around, clr], max_epochs=1)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after KeyboardInterrupt exits with 1
            tr.fit(model, loader(shuffle=True))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C from then on
    assert isinstance(around.exception, KeyboardInterrupt) and model.calls == 5
    assert tr.callbacks == [around, clr]
    assert_same(around.before, around.after)
