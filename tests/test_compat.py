"""lightning_clr._compat: the package of the user's objects, and callback bases that both packages accept,
checked with the standalone package's own Trainer and LightningCLI (a real subprocess)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning.pytorch
import pytest

from lightning_clr import CyclicLearningRate
from lightning_clr._compat import callback_bases, lightning_package

pytorch_lightning = pytest.importorskip("pytorch_lightning", reason="the standalone pytorch_lightning is not installed")
SCRIPT = Path(__file__).parent / "scripts" / "pl_cli.py"
sys.path.insert(0, str(SCRIPT.parent))


def test_lightning_package_of_models_trainers_classes_and_factories() -> None:
    class A(lightning.pytorch.LightningModule):
        pass

    class B(pytorch_lightning.LightningModule):
        pass

    assert lightning_package(A()) is lightning.pytorch
    assert lightning_package(B) is pytorch_lightning
    assert lightning_package(pytorch_lightning.Trainer(logger=False)) is pytorch_lightning
    assert lightning_package(lambda: B()) is lightning.pytorch  # a factory: not known before it is called


def test_callback_bases_make_a_callback_of_both_packages_that_pickles() -> None:
    from pl_cli import HalvingLR

    bases = callback_bases()
    assert bases == (lightning.pytorch.Callback, pytorch_lightning.Callback)
    cb = HalvingLR()
    assert isinstance(cb, lightning.pytorch.Callback) and isinstance(cb, pytorch_lightning.Callback)
    assert type(pickle.loads(pickle.dumps(cb))) is HalvingLR  # ddp_spawn pickles the trainer's callbacks


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--trainer.logger=false", "--trainer.max_steps=3",
         "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )


@pytest.mark.slow
def test_pytorch_lightning_cli_takes_a_callback_on_callback_bases(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--trainer.callbacks+=pl_cli.HalvingLR")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "pl_cli.HalvingLR" in out["callbacks"]
    assert out["lrs"] == [0.005, 0.0025, 0.00125]  # the callback really ran in pytorch_lightning's Trainer


@pytest.mark.slow
@pytest.mark.xfail(not issubclass(CyclicLearningRate, pytorch_lightning.Callback), strict=True,
                   reason="CyclicLearningRate subclasses lightning.pytorch.Callback only; passes once callback.py "
                   "declares `class CyclicLearningRate(*callback_bases())`")
def test_pytorch_lightning_cli_takes_cyclic_learning_rate(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--trainer.callbacks+=lightning_clr.CyclicLearningRate",
                   "--trainer.callbacks.base_lr=0.001", "--trainer.callbacks.max_lr=0.01",
                   "--trainer.callbacks.step_size_up=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["lrs"] == pytest.approx([0.001, 0.0055, 0.01])


def test_importing_the_callback_leaves_lightnings_logger_where_it_was() -> None:
    """pytorch_lightning re-points lightning_utilities' shared rank-zero logger at its own when imported; our
    import of it must not re-route a lightning.pytorch user's messages (their logging configuration)."""
    import subprocess
    import sys

    code = (
        "import logging, lightning.pytorch, lightning_utilities.core.rank_zero as r\n"
        "before = r.log.name\n"
        "import lightning_clr.callback\n"
        "print(before, r.log.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["lightning.pytorch.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"]
