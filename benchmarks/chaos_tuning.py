"""Chaos run of :func:`lightning_clr.tune_cycle_length`: 4 workers share one PostgreSQL study while one is
SIGKILLed (and restarted), one is SIGSTOPped, and then the database refuses connections for a while.

Checked at the end, from the study itself and the workers' own records:

- no trial lost or duplicated (trial numbers 0..n-1, each once; every trial a worker started to train is in
  the study, no trial was trained by two workers, every finished trial's worker recorded it);
- no trial left RUNNING;
- no worker ended badly other than the killed one (exit status 0);
- one bound pair in the study (every trial trained with the same base_lr and max_lr);
- the best result equals the trials' own records (each COMPLETE trial's value is its last cycle-end report,
  and ``best_value`` is the best setting's mean of them).

Usage (CPU-heavy: run it niced; tiny models, a sleep in each training step makes trials last):
    nice -n 10 python benchmarks/chaos_tuning.py --quick
    nice -n 10 python benchmarks/chaos_tuning.py --out benchmarks/results/chaos_tuning.json

Needs a PostgreSQL server (``--admin-url``, default ``postgresql://postgres@127.0.0.1:5432/test``); a database
of its own is created for the run and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDY = "chaos"


# ---------------------------------------------------------------------------------------------- the worker
def run_worker(args: argparse.Namespace) -> None:
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_clr import CyclePruningCallback, tune_cycle_length
    from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig

    class Record(pl.Callback):
        """This worker's own record of the trials it trains: one line when a trial's fit starts, one when it ends
        (with the last val_loss it saw), in ``OUT/trials.jsonl``; the driver reads it to act mid-trial and checks
        it against the study."""

        def _write(self, trainer: pl.Trainer, event: str) -> None:
            pruning = next((c for c in trainer.callbacks if isinstance(c, CyclePruningCallback)), None)
            if pruning is None:  # the study's range test: a fit of its own, no trial
                return
            row = {"event": event, "number": pruning.trial.number, "time": time.time()}
            if event == "end" and "val_loss" in trainer.callback_metrics:
                row["val_loss"] = float(trainer.callback_metrics["val_loss"])
            with open(Path(args.out, "trials.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")

        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._write(trainer, "start")

        def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._write(trainer, "end")

    class Data(pl.LightningDataModule):
        def _set(self, seed: int, n: int) -> TensorDataset:
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(n, 8, generator=g)
            return TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g))

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self._set(0, 64), batch_size=16, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self._set(1, 32), batch_size=32)

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            time.sleep(args.sleep)  # a trial lasts long enough to be killed, stopped and cut off mid-way
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.set_num_threads(1)
    result = tune_cycle_length(
        Net, Data, n_trials=args.n_trials, max_epochs=args.max_epochs,
        trainer_kwargs={"accelerator": "cpu", "callbacks": [Record()]},
        search=SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=3, warm_start=False),
        study=StudyConfig(storage=args.url, study_name=STUDY, heartbeat_interval=1.0, grace_period=5.0,
                          seed=args.seed),
        output=OutputConfig(output_dir=args.out, logger=False, plot=False, progress_bar=False),
    )
    mine = {"best_value": result.best_value, "best_half_cycle_epochs": result.best_half_cycle_epochs}
    Path(args.out, "result.json").write_text(json.dumps(mine))


def records(out: Path) -> list[dict[str, Any]]:
    """A worker's lines of ``trials.jsonl`` (a line cut by a SIGKILL is dropped)."""
    path = out / "trials.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


# ---------------------------------------------------------------------------------------------- the run
class Run:
    def __init__(self, args: argparse.Namespace, url: str, out: Path) -> None:
        self.args, self.url, self.out = args, url, out
        self.procs: dict[str, subprocess.Popen] = {}
        self.timeline: list[tuple[float, str]] = []
        self.start = time.time()
        self.acted: dict[str, Any] = {}

    def note(self, text: str) -> None:
        self.timeline.append((round(time.time() - self.start, 1), text))
        print(f"[{self.timeline[-1][0]:7.1f} s] {text}", flush=True)

    def spawn(self, name: str, seed: int) -> None:
        cmd = [sys.executable, __file__, "--worker", "--url", self.url, "--out", str(self.out / name),
               "--n-trials", str(self.args.n_trials), "--max-epochs", str(self.args.max_epochs),
               "--sleep", str(self.args.sleep), "--seed", str(seed)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        log = open(self.out / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.note(f"started {name} (pid {self.procs[name].pid})")

    def study(self) -> Any:
        import optuna

        from lightning_clr.tuning._storage import database_url

        return optuna.load_study(study_name=STUDY, storage=database_url(self.url))

    def wait_for(self, what: str, test: Any, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if test():
                    return
            except Exception:  # noqa: BLE001 - the study may not exist yet
                pass
            time.sleep(1.0)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}")

    def wait_in_trial(self, name: str, seconds: float) -> int:
        """Until worker ``name`` has been training a trial (its fit started, not ended) for ``seconds``: that
        trial's number, as the check that passed read it."""
        seen: list[int] = []

        def training() -> bool:
            rows = records(self.out / name)
            if rows and rows[-1]["event"] == "start" and time.time() - rows[-1]["time"] >= seconds:
                seen.append(rows[-1]["number"])
                return True
            return False

        self.wait_for(f"{name} in a trial", training)
        return seen[-1]


def _admin(admin_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def chaos(run: Run, db: str) -> None:
    a = run.args
    for i in range(4):
        run.spawn(f"w{i}", seed=i)
    killed = run.wait_in_trial("w0", 3.0)
    os.kill(run.procs["w0"].pid, signal.SIGKILL)
    run.procs["w0"].wait()
    run.note(f"SIGKILLed w0 in the middle of its trial {killed}")
    run.spawn("w0b", seed=10)  # what a supervisor (a SLURM requeue) does
    stopped = run.wait_in_trial("w1", 1.0)
    os.kill(run.procs["w1"].pid, signal.SIGSTOP)
    run.note(f"SIGSTOPped w1 in the middle of its trial {stopped} for {a.stop_s:g} s")
    run.acted = {"killed": ["w0", killed], "stopped": ["w1", stopped]}
    time.sleep(a.stop_s)
    os.kill(run.procs["w1"].pid, signal.SIGCONT)
    run.note("SIGCONT w1")
    time.sleep(5.0)
    _admin(a.admin_url, f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false',
           f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
    alive = sorted(name for name, proc in run.procs.items() if proc.poll() is None)
    run.note(f"database refuses connections (backends terminated) for {a.outage_s:g} s; workers running: {alive}")
    time.sleep(a.outage_s)
    _admin(a.admin_url, f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    run.note("database accepts connections again")
    deadline = time.time() + a.timeout
    for name, proc in run.procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            run.note(f"{name} still running at the time limit: killed")
    run.note("all workers ended")


def checks(run: Run) -> dict[str, Any]:
    from optuna.trial import TrialState

    from lightning_clr.tuning._reconnect import TWIN_ERROR
    from lightning_clr.tuning._result import result_of

    study = run.study()
    trials = study.get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    exits = {name: p.returncode for name, p in run.procs.items()}
    pairs = {json.dumps([t.user_attrs.get("base_lr"), t.user_attrs.get("max_lr")]) for t in trials
             if "base_lr" in t.user_attrs}  # one value per param group
    own = []
    for t in trials:
        if t.state == TrialState.COMPLETE:
            last = t.intermediate_values[max(t.intermediate_values)]
            history = t.user_attrs.get("history", {})
            own.append(t.value == last and float(history[str(max(int(k) for k in history))]) == last)
    result = result_of(study, "val_loss", "minimize", 0, (None, None))
    means: dict[tuple, list[float]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            means.setdefault(tuple(sorted(t.params.items())), []).append(t.value)
    best_mean = min((sum(v) / len(v) for v in means.values()), default=None)
    owners: dict[int, list[str]] = {}  # trial number -> the workers that started to train it
    for name in run.procs:
        for row in records(run.out / name):
            if row["event"] == "start":
                owners.setdefault(row["number"], []).append(name)
    finished = [t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    by_number = {t.number: t for t in trials}
    outcome = {
        "trials": len(trials),
        "states": {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)},
        "errors": {t.number: t.user_attrs["error"][:160] for t in trials if t.user_attrs.get("error")},
        "twins_voided": [t.number for t in trials if str(t.user_attrs.get("error") or "").startswith(TWIN_ERROR)],
        "exit_status": exits,
        "last_lines": {name: _last_line(run.out / f"{name}.log") for name in run.procs},
        "bound_pairs": [json.loads(p) for p in sorted(pairs)],
        "best_value": result.best_value,
        "acted_on": {what: {"worker": name, "trial": number, "state": by_number[number].state.name,
                            "error": (by_number[number].user_attrs.get("error") or "")[:160]}
                     for what, (name, number) in run.acted.items() if number in by_number},
        "trials_per_worker": {name: sorted(n for n, who in owners.items() if name in who) for name in run.procs},
        "log_lines": {name: _counts(run.out / f"{name}.log") for name in run.procs},
    }
    outcome["checks"] = {
        "no_trial_lost_or_duplicated": numbers == list(range(len(numbers)))
        and all(n in by_number for n in owners)  # every trial a worker trained is in the study
        and all(len(who) == 1 for who in owners.values())  # none trained by two workers
        and all(n in owners for n in finished),  # every finished trial was trained by a worker that says so
        "none_left_running": all(t.state != TrialState.RUNNING for t in trials),
        "no_crash_but_the_killed_one": all(code == 0 for name, code in exits.items() if name != "w0"),
        "one_bound_pair": len(pairs) == 1,
        "best_equals_trials_records": all(own) and best_mean == result.best_value,
        "at_least_16_trials": len(trials) >= 16,
    }
    return outcome


LINES = {"lost_connection": "lost its connection", "answers_again": "answers again after",
         "finished_by_another_worker": "was finished by another worker"}


def _counts(path: Path) -> dict[str, int]:
    """How often each of the tuner's fault lines (``LINES``) is in a worker's log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return {key: text.count(line) for key, line in LINES.items()}


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return lines[-1][:300] if lines else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="shorter stall and outage, shorter trials")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--out", default=None, help="JSON of the outcome")
    p.add_argument("--n-trials", type=int, default=14, help="trials per worker (4 workers and a restarted one):"
                   " enough that every worker is still tuning when the database goes away")
    p.add_argument("--max-epochs", type=int, default=8)
    p.add_argument("--sleep", type=float, default=0.25, help="seconds per training step")
    p.add_argument("--stop-s", type=float, default=60.0)
    p.add_argument("--outage-s", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=1800.0)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.n_trials, args.max_epochs, args.sleep, args.stop_s, args.outage_s = 4, 4, 0.2, 20.0, 10.0
    db = f"lclr_chaos_{uuid.uuid4().hex[:10]}"
    _admin(args.admin_url, f'CREATE DATABASE "{db}"')
    out = Path(f"/tmp/{db}")
    out.mkdir()
    run = Run(args, args.admin_url.rsplit("/", 1)[0] + "/" + db, out)
    try:
        chaos(run, db)
        outcome = {"quick": args.quick, "stop_s": args.stop_s, "outage_s": args.outage_s, **checks(run),
                   "timeline": run.timeline}
    finally:
        for proc in run.procs.values():
            if proc.poll() is None:
                proc.kill()
        _admin(args.admin_url, f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true',
               f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    print(json.dumps(outcome, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(outcome, indent=1) + "\n")


if __name__ == "__main__":
    main()
