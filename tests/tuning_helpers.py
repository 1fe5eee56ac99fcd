"""Helpers of the tune_cycle_length tests: a tiny model, the tuner with grouped settings from flat keywords,
the worker script runner, PostgreSQL."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import SameTaskData
from processes import clean_env, free_port
from torch import nn

from lightning_clr import tune_cycle_length
from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "tune_worker.py"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_url() -> str:
    """A plain ``postgresql://`` URL (Optuna's docs' shape, psycopg 3) of a database of THIS Optuna version's own.

    Optuna's schema differs between versions (4.0 and 5.0 disagree on ``trial_values.value_type``: "operator does
    not exist: trialvaluetype = character varying"), and CI runs the suite twice, on the declared floors and on
    the newest releases, against one server; the pitfall notes say it too: keep all workers on one version.
    """
    import optuna

    db = "lclr_optuna_" + re.sub(r"\W", "_", optuna.__version__)
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
                admin.execute(f'CREATE DATABASE "{db}"')
    except Exception:  # no server (the tests skip), or a concurrent CREATE won the race: the URL is right anyway
        pass
    return f"postgresql://postgres@127.0.0.1:5432/{db}"


PG_URL = _pg_url()


# ---------------------------------------------------------------------------------------------- helpers
DM = functools.partial(SameTaskData, n=64, batch_size=16)  # the tests' data module: 4 steps per epoch


class Net(pl.LightningModule):
    """Tiny MLP; ``fail`` makes its training step raise, ``nan`` its validation loss NaN; ``val_scale``
    multiplies the logged validation loss (a model that is plainly worse)."""

    built: list[Net] = []

    def __init__(self, fail: bool = False, nan: bool = False, val_scale: float = 1.0) -> None:
        super().__init__()
        self.fail, self.nan, self.val_scale = fail, nan, val_scale
        self.net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        self.initial = [p.detach().clone() for p in self.parameters()]
        Net.built.append(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("a bug in the user's training_step")
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y) * self.val_scale
        self.log("val_loss", loss * float("nan") if self.nan else loss)
        self.log("val_score", -loss)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tune(tmp_path: Path, **kwargs: Any) -> Any:
    args: dict[str, Any] = dict(
        n_trials=3, max_epochs=4, min_half_cycle_epochs=1, max_half_cycle_epochs=2, base_lr=0.01, max_lr=0.05,
        output_dir=str(tmp_path / "tuning"), plot=False, progress_bar=False, logger=False,
        trainer_kwargs={"accelerator": "cpu"},
    )
    args.update(kwargs)
    model = args.pop("model", Net)
    groups = {name: {k: args.pop(k) for k in list(args) if k in fields(cls)}
              for name, cls in (("search", SearchSpace), ("study", StudyConfig), ("output", OutputConfig))}
    return tune_cycle_length(model, args.pop("datamodule", DM), **args, **groups)


def fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def worker(out: Path, *args: str, torchrun: bool = False, wait: bool = True, timeout: int = 240) -> Any:
    cmd = [sys.executable, str(WORKER), "--out", str(out), *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(WORKER), "--out", str(out), *args]
    if not wait:
        return subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and any(m in proc.stdout + proc.stderr for m in ("EADDRINUSE", "ddress already in use")):
        shutil.rmtree(out, ignore_errors=True)  # another run on the machine took the port: once more, afresh
        proc = subprocess.run(cmd_with_port(cmd, torchrun), env=clean_env(), capture_output=True, text=True,
                              timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


def cmd_with_port(cmd: list[str], torchrun: bool) -> list[str]:
    return [f"--master_port={free_port()}" if torchrun and c.startswith("--master_port=") else c for c in cmd]


def rank_rows(out: Path) -> dict[int, list[dict[str, Any]]]:
    return {int(p.stem[4:]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(out.glob("rank*.jsonl"))}


def worker_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("result_*.json"))]


def postgres_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


needs_pg = pytest.mark.skipif(not postgres_up(), reason="no PostgreSQL server answers at 127.0.0.1:5432")


