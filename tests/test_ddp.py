"""CyclicLearningRate under DDP on CPU (gloo, 2 ranks), launched every way a user launches it.

``strategy="ddp"`` re-runs the main script in each rank, so every fit here is a standalone script
(tests/scripts/ddp_fit.py) run through ``subprocess`` with its own MASTER_PORT. Each rank writes
``rank{r}.json`` from ``on_fit_end`` (only the parent returns from ``fit`` with ddp_spawn/ddp_fork).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_fit.py"
TIMEOUT = 240  # seconds per subprocess run; a deadlocked collective ends here instead of hanging CI

pytestmark = [pytest.mark.slow]

# Variables that would make Lightning think it runs under another launcher or cluster.
_LAUNCH_ENV_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PL_", "LSB_", "OMPI_", "PMI_", "KUBERNETES_")
_LAUNCH_ENV_KEYS = (
    "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "NODE_RANK", "JSM_NAMESPACE_SIZE",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k not in _LAUNCH_ENV_KEYS and not k.startswith(_LAUNCH_ENV_PREFIXES)
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["MASTER_ADDR"] = "127.0.0.1"
    env["MASTER_PORT"] = str(free_port())
    env.update(extra)
    return env


def _check(proc: subprocess.CompletedProcess, out: Path, expect_rc: int = 0) -> None:
    if proc.returncode != expect_rc:
        errors = [p.read_text()[-3000:] for p in sorted(out.glob("rank*.json")) if '"error"' in p.read_text()]
        raise AssertionError(
            f"exit code {proc.returncode}\n--- output ---\n{proc.stdout[-6000:]}\n--- rank errors ---\n{errors}"
        )


def launch(launcher: str, out: Path, *args: str, devices: int = 2, expect_rc: int = 0) -> list[dict[str, Any]]:
    """Run ddp_fit.py with ``launcher`` on ``devices`` CPU ranks; return the ranks' reports, by rank."""
    out.mkdir(parents=True, exist_ok=True)
    script = [str(SCRIPT), "--out", str(out), "--devices", str(devices), *args]
    run = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    if launcher in ("ddp", "ddp_spawn", "ddp_fork", "fsdp", "auto"):
        proc = subprocess.run([sys.executable, *script, "--strategy", launcher], env=clean_env(), **run)
        _check(proc, out, expect_rc)
    elif launcher == "torchrun":
        env = clean_env()
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={devices}", "--nnodes=1",
               "--master-addr=127.0.0.1", f"--master-port={env['MASTER_PORT']}", *script, "--strategy", "ddp"]
        proc = subprocess.run(cmd, env=env, **run)
        _check(proc, out, expect_rc)
    elif launcher == "slurm":
        # What `srun --ntasks-per-node=2` sets for each task (srun itself is not installed here).
        port = str(free_port())
        procs = []
        for rank in range(devices):
            env = clean_env(
                MASTER_PORT=port, SLURM_NTASKS=str(devices), SLURM_NTASKS_PER_NODE=str(devices),
                SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1",
                SLURM_JOB_NAME="clr_ddp_test", SLURM_JOB_ID="4242", SLURM_NODELIST="127.0.0.1",
            )
            env.pop("MASTER_ADDR")  # SLURMEnvironment resolves it from SLURM_NODELIST
            procs.append(subprocess.Popen([sys.executable, *script, "--strategy", "ddp"], env=env, cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        try:
            outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for p, output in zip(procs, outputs):
            assert p.returncode == expect_rc, f"exit code {p.returncode}\n--- output ---\n{output[-6000:]}"
    else:
        raise ValueError(launcher)
    reports = []
    for rank in range(devices):
        path = out / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no report (found {sorted(os.listdir(out))})"
        reports.append(json.loads(path.read_text()))
    return reports


def assert_ranks_agree(reports: list[dict[str, Any]]) -> None:
    """Same fit on every rank: bounds, cycle, per-step LR and momentum, step count, final weights."""
    r0 = reports[0]
    assert [r["global_rank"] for r in reports] == list(range(len(reports)))
    assert len({r["pid"] for r in reports}) == len(reports), "ranks must be separate processes"
    assert r0["global_step"] > 0 and len(r0["lrs"]) == r0["global_step"]
    assert len(set(r0["lrs"])) > 2, "the LR must actually cycle"
    for r in reports[1:]:
        assert r["world_size"] == len(reports)
        for key in ("base_lr", "max_lr", "step_size_up", "step_size_down", "steps_per_epoch", "global_step",
                    "clr_steps", "lrs", "momenta", "global_steps"):
            assert r[key] == r0[key], f"rank {r['global_rank']} differs in {key}: {r[key]} != {r0[key]}"
        assert r["weights"].keys() == r0["weights"].keys()
        for name, values in r["weights"].items():
            assert values == r0["weights"][name], f"rank {r['global_rank']} has other final weights in {name}"
        if r0["range_test"] is not None:
            for key in ("lrs", "base_lr", "max_lr", "stopped_early", "stop_reason"):
                assert r["range_test"][key] == r0["range_test"][key], f"range test {key} differs"
    for values in r0["weights"].values():
        assert all(math.isfinite(v) for v in values)


def _max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- fixtures (one run each)
_cache: dict[str, Any] = {}


def cached(key: str, tmp_path_factory: pytest.TempPathFactory, launcher: str, *args: str,
           devices: int = 2, expect_rc: int = 0) -> list[dict[str, Any]]:
    if key not in _cache:
        _cache[key] = launch(launcher, tmp_path_factory.mktemp(key), *args, devices=devices, expect_rc=expect_rc)
    return _cache[key]


FIT_ARGS: tuple[str, ...] = ("--bounds", "explicit")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return cached("ddp", tmp_path_factory, "ddp", *FIT_ARGS)


@pytest.fixture(scope="module")
def fork_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return cached("ddp_fork", tmp_path_factory, "ddp_fork", *FIT_ARGS)


# ----------------------------------------------------------------------------- launchers
@pytest.mark.timeout(TIMEOUT + 60)
def test_strategy_ddp(ddp_run: list[dict[str, Any]]) -> None:
    assert ddp_run[0]["launcher"] == "_SubprocessScriptLauncher"
    assert_ranks_agree(ddp_run)


@pytest.mark.timeout(TIMEOUT + 60)
def test_strategy_ddp_fork(fork_run: list[dict[str, Any]]) -> None:
    assert fork_run[0]["launcher"] == "_MultiProcessingLauncher"
    assert_ranks_agree(fork_run)


@pytest.mark.timeout(TIMEOUT + 60)
def test_strategy_ddp_spawn(tmp_path: Path) -> None:
    reports = launch("ddp_spawn", tmp_path, *FIT_ARGS)
    assert reports[0]["strategy"] == "DDPStrategy" and reports[0]["launcher"] == "_MultiProcessingLauncher"
    assert_ranks_agree(reports)


@pytest.mark.timeout(TIMEOUT + 60)
def test_torchrun(tmp_path: Path) -> None:
    reports = launch("torchrun", tmp_path, *FIT_ARGS)
    assert reports[0]["cluster_environment"] == "TorchElasticEnvironment"
    assert_ranks_agree(reports)


@pytest.mark.timeout(TIMEOUT + 60)
def test_slurm_environment(tmp_path: Path) -> None:
    """Two processes started the way ``srun --ntasks-per-node=2`` starts them (SLURM_* variables)."""
    reports = launch("slurm", tmp_path, *FIT_ARGS)
    assert [r["cluster_environment"] for r in reports] == ["SLURMEnvironment"] * 2
    assert [r["local_rank"] for r in reports] == [0, 1]
    assert_ranks_agree(reports)


# ----------------------------------------------------------------------------- cycle length per rank
@pytest.mark.timeout(TIMEOUT + 60)
def test_cycle_length_uses_per_rank_batches(ddp_run: list[dict[str, Any]],
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Same per-rank batch size: doubling the world size halves the batches per rank, so the cycle
    (in optimizer steps, derived from ``half_cycle_epochs``) halves too; it stays 1 epoch long."""
    single = cached("single_b8", tmp_path_factory, "auto", *FIT_ARGS, devices=1)[0]
    double = ddp_run[0]
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert single["num_training_batches"] == 8 and double["num_training_batches"] == 4
    assert single["steps_per_epoch"] == 2 * double["steps_per_epoch"]
    assert single["step_size_up"] == 2 * double["step_size_up"]
    assert single["step_size_up"] / single["steps_per_epoch"] == double["step_size_up"] / double["steps_per_epoch"]


# ----------------------------------------------------------------------------- 1 rank vs 2 ranks
@pytest.mark.timeout(TIMEOUT + 60)
def test_two_ranks_match_one_rank_with_the_same_global_batch(ddp_run: list[dict[str, Any]],
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """2 ranks x batch 8 see, step for step, the samples of 1 rank x batch 16 (DistributedSampler
    interleaves; shuffle off), and DDP averages the gradients: same bounds, same LR per step, and the
    same final weights up to float32 summation order."""
    single = cached("single_b16", tmp_path_factory, "auto", *FIT_ARGS, "--batch-size", "16", devices=1)[0]
    double = ddp_run[0]
    assert single["num_training_batches"] == double["num_training_batches"] == 4
    assert single["lrs"] == pytest.approx(double["lrs"], rel=1e-12)
    assert single["base_lr"] == pytest.approx(double["base_lr"], rel=1e-12)
    assert single["max_lr"] == pytest.approx(double["max_lr"], rel=1e-12)
    for name, values in single["weights"].items():
        assert _max_rel_diff(values, double["weights"][name]) < 1e-5, name


# ----------------------------------------------------------------------------- no collectives per step
@pytest.mark.timeout(TIMEOUT + 60)
def test_callback_adds_no_collective_to_training_steps(fork_run: list[dict[str, Any]],
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    baseline = cached("fork_no_clr", tmp_path_factory, "ddp_fork", *FIT_ARGS, "--no-clr")
    for with_clr, without in zip(fork_run, baseline):
        c_with, c_without = with_clr["collectives"], without["collectives"]
        # The counter sees the strategy's collectives: the callback's bounds broadcast at train start.
        assert c_with["before_training"] > c_without["before_training"]
        # After train start, the same collectives with and without the callback, and none inside a step.
        assert c_with["training_by_name"] == c_without["training_by_name"]
        assert c_with["per_step"] == c_without["per_step"] == [0] * with_clr["global_step"]
