"""Chaos run of :func:`lightning_clr.tune_cycle_length`: 4 workers share one PostgreSQL study while one is
SIGKILLed (and restarted), one is SIGSTOPped, and then the database refuses connections for a while.

Checked at the end, from the study itself and the workers' own records:

- no trial lost or duplicated (trial numbers 0..n-1, each once; every worker's finished trial is in the study);
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

    from lightning_clr import tune_cycle_length
    from lightning_clr.tuning import OutputConfig, SearchSpace, StudyConfig

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
        Net, Data, n_trials=args.n_trials, max_epochs=args.max_epochs, trainer_kwargs={"accelerator": "cpu"},
        search=SearchSpace(min_half_cycle_epochs=1, max_half_cycle_epochs=3, warm_start=False),
        study=StudyConfig(storage=args.url, study_name=STUDY, heartbeat_interval=1.0, grace_period=5.0,
                          seed=args.seed),
        output=OutputConfig(output_dir=args.out, logger=False, plot=False, progress_bar=False),
    )
    mine = {"best_value": result.best_value, "best_half_cycle_epochs": result.best_half_cycle_epochs}
    Path(args.out, "result.json").write_text(json.dumps(mine))


# ---------------------------------------------------------------------------------------------- the run
class Run:
    def __init__(self, args: argparse.Namespace, url: str, out: Path) -> None:
        self.args, self.url, self.out = args, url, out
        self.procs: dict[str, subprocess.Popen] = {}
        self.timeline: list[tuple[float, str]] = []
        self.start = time.time()

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

    def running(self) -> int:
        from optuna.trial import TrialState

        return len(self.study().get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _admin(admin_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def chaos(run: Run, db: str) -> None:
    a = run.args
    for i in range(4):
        run.spawn(f"w{i}", seed=i)
    run.wait_for("trials running", lambda: run.running() >= 2)
    time.sleep(3.0)
    os.kill(run.procs["w0"].pid, signal.SIGKILL)
    run.procs["w0"].wait()
    run.note("SIGKILLed w0 mid-trial")
    run.spawn("w0b", seed=10)  # what a supervisor (a SLURM requeue) does
    run.wait_for("w1 in a trial", lambda: run.running() >= 2)
    os.kill(run.procs["w1"].pid, signal.SIGSTOP)
    run.note(f"SIGSTOPped w1 for {a.stop_s:g} s")
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
    outcome = {
        "trials": len(trials),
        "states": {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)},
        "errors": {t.number: t.user_attrs["error"][:160] for t in trials if t.user_attrs.get("error")},
        "twins_voided": [t.number for t in trials if str(t.user_attrs.get("error") or "").startswith(TWIN_ERROR)],
        "exit_status": exits,
        "last_lines": {name: _last_line(run.out / f"{name}.log") for name in run.procs},
        "bound_pairs": [json.loads(p) for p in sorted(pairs)],
        "best_value": result.best_value,
    }
    outcome["checks"] = {
        "no_trial_lost_or_duplicated": numbers == list(range(len(numbers))),
        "none_left_running": all(t.state != TrialState.RUNNING for t in trials),
        "no_crash_but_the_killed_one": all(code == 0 for name, code in exits.items() if name != "w0"),
        "one_bound_pair": len(pairs) == 1,
        "best_equals_trials_records": all(own) and best_mean == result.best_value,
        "at_least_16_trials": len(trials) >= 16,
    }
    return outcome


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
