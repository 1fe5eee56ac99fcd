"""CyclicLearningRate under DDP on CPU (gloo, 2 ranks), launched every way a user launches it.

``strategy="ddp"`` re-runs the main script in each rank, so every fit here is a standalone script
(tests/scripts/ddp_fit.py) run through ``subprocess`` with its own MASTER_PORT. Each rank writes
``rank{r}.json`` from ``on_fit_end`` (only the parent returns from ``fit`` with ddp_spawn/ddp_fork).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from processes import clean_env, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_fit.py"
TIMEOUT = 150  # seconds per subprocess run (about 25 s here); a deadlocked collective ends here, not in CI's

pytestmark = [pytest.mark.slow]


def _rank_errors(out: Path) -> list[str]:
    return [p.read_text()[-3000:] for p in sorted(out.glob("rank*.json")) if '"error"' in p.read_text()]


def run_group(cmds: list[tuple[list[str], dict[str, str]]], out: Path, expect_rc: int = 0) -> list[str]:
    """Start the commands, each in its own session, and wait. On timeout, kill each whole process group
    (the ranks a launcher started included), so that a deadlocked collective leaves nothing behind."""
    procs = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
        for cmd, env in cmds
    ]
    outputs: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        for p in procs:
            try:
                outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                for q in procs:
                    _kill_group(q)
                late = [q.communicate()[0][-3000:] for q in procs[len(outputs):]]
                raise AssertionError(
                    f"timed out after {TIMEOUT} s (a rank left waiting in a collective?)\n" + "\n".join(late)
                ) from None
    finally:
        for p in procs:
            _kill_group(p)
    for i, output in enumerate(outputs):
        (out / f"output{i}.log").write_text(output)  # kept in pytest's tmp dir for a post-mortem
    for p, output in zip(procs, outputs):
        if p.returncode != expect_rc:
            raise AssertionError(
                f"exit code {p.returncode}\n--- output ---\n{output[-6000:]}\n--- rank errors ---\n{_rank_errors(out)}"
            )
    return outputs


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group holds only this run's processes
    except ProcessLookupError:
        pass
    proc.wait()


def launch(launcher: str, out: Path, *args: str, devices: int = 2, expect_rc: int = 0) -> list[dict[str, Any]]:
    """Run ddp_fit.py with ``launcher`` on ``devices`` CPU ranks; return the ranks' reports, by rank.
    A run that lost its port to another process is started again once, on another port."""
    try:
        return _launch(launcher, out, *args, devices=devices, expect_rc=expect_rc)
    except AssertionError as err:
        if not any(marker in str(err) for marker in ("EADDRINUSE", "Address already in use", "address already in use")):
            raise
        for path in out.glob("rank*.json"):
            path.unlink()
        return _launch(launcher, out, *args, devices=devices, expect_rc=expect_rc)


def _launch(launcher: str, out: Path, *args: str, devices: int = 2, expect_rc: int = 0) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    script = [str(SCRIPT), "--out", str(out), "--devices", str(devices), *args]
    if launcher in ("ddp", "ddp_spawn", "ddp_fork", "fsdp_cpu", "auto"):
        run_group([([sys.executable, *script, "--strategy", launcher], clean_env())], out, expect_rc)
    elif launcher == "torchrun":
        env = clean_env()
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={devices}", "--nnodes=1",
               "--master-addr=127.0.0.1", f"--master-port={env['MASTER_PORT']}", *script, "--strategy", "ddp"]
        run_group([(cmd, env)], out, expect_rc)
    elif launcher == "slurm":
        # What `srun --ntasks-per-node=2` sets for each task (srun itself is not installed here).
        port = str(free_port())
        cmds = []
        for rank in range(devices):
            env = clean_env(
                MASTER_PORT=port, SLURM_NTASKS=str(devices), SLURM_NTASKS_PER_NODE=str(devices),
                SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1",
                SLURM_JOB_NAME="clr_ddp_test", SLURM_JOB_ID="4242", SLURM_NODELIST="127.0.0.1",
            )
            env.pop("MASTER_ADDR")  # SLURMEnvironment resolves it from SLURM_NODELIST
            cmds.append(([sys.executable, *script, "--strategy", "ddp"], env))
        run_group(cmds, out, expect_rc)
    else:
        raise ValueError(launcher)
    reports = []
    for rank in range(devices):
        path = out / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no report (found {sorted(os.listdir(out))})"
        reports.append(json.loads(path.read_text()))
    return reports


def assert_ranks_agree(reports: list[dict[str, Any]]) -> None:
    """One shared range test and the same fit on every rank: curve, bounds, cycle, per-step LR and
    momentum, step count, final weights; and each rank's state restored exactly after the range test."""
    r0 = reports[0]
    assert [r["global_rank"] for r in reports] == list(range(len(reports)))
    assert len({r["pid"] for r in reports}) == len(reports), "ranks must be separate processes"
    assert r0["global_step"] > 0 and len(r0["lrs"]) == r0["global_step"]
    assert len(set(r0["lrs"])) > 2, "the LR must actually cycle"
    assert min(r0["lrs"]) == pytest.approx(r0["base_lr"]) and max(r0["lrs"]) == pytest.approx(r0["max_lr"])
    rt = r0["range_test"]
    assert rt is not None and len(rt["lrs"]) >= 10 and not rt["fallback"], rt
    assert (r0["base_lr"], r0["max_lr"]) == (rt["base_lr"], rt["max_lr"])
    for r in reports:
        # The sweep took real steps on this rank, and everything they changed was put back bitwise.
        assert r["sweep_training_steps"] == len(rt["lrs"])
        assert r["fingerprint_after_range_test"] == r["fingerprint_before_range_test"], (
            f"rank {r['global_rank']}: state after the range test differs from before it"
        )
    for r in reports[1:]:
        assert r["world_size"] == len(reports)
        for key in ("base_lr", "max_lr", "step_size_up", "step_size_down", "steps_per_epoch", "global_step",
                    "clr_steps", "lrs", "momenta", "global_steps", "training_step_calls"):
            assert r[key] == r0[key], f"rank {r['global_rank']} differs in {key}: {r[key]} != {r0[key]}"
        for key in ("lrs", "losses", "base_lr", "max_lr", "stopped_early", "stop_reason"):
            assert r["range_test"][key] == rt[key], f"range test {key} differs"
        assert r["weights"].keys() == r0["weights"].keys()
        for name, values in r["weights"].items():
            assert values == r0["weights"][name], f"rank {r['global_rank']} has other final weights in {name}"
    # Each rank's own losses differ (other samples): the curve is their mean, not one rank's.
    sweep = len(rt["lrs"])
    local = [[loss for _, loss in r["local_losses"][:sweep]] for r in reports]
    assert local[0] != local[1]
    mean = [sum(v) / len(v) for v in zip(*local)]
    assert rt["losses"] == pytest.approx(mean, rel=1e-5, nan_ok=True)
    for values in r0["weights"].values():
        assert all(math.isfinite(v) for v in values)


# ----------------------------------------------------------------------------- fixtures (one run each)
_cache: dict[str, Any] = {}


def cached(key: str, tmp_path_factory: pytest.TempPathFactory, launcher: str, *args: str,
           devices: int = 2, expect_rc: int = 0) -> list[dict[str, Any]]:
    if key not in _cache:
        _cache[key] = launch(launcher, tmp_path_factory.mktemp(key), *args, devices=devices, expect_rc=expect_rc)
    return _cache[key]


# Bounds from the range test (40 sweep steps over 1e-4..10: with 20, its one 3-point dip is within the per-batch
# noise and the reading falls back); 256 samples, 32 per rank and step: 4 steps per epoch on 2 ranks.
FIT_ARGS: tuple[str, ...] = ("--bounds", "auto", "--batch-size", "32")
NAN_ABOVE_LR = 0.1  # the sweep's 25th LR (0.119) is the first above it; it diverges only at its 30th (0.52)


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


# ----------------------------------------------------------------------------- NaN on one rank
@pytest.mark.timeout(TIMEOUT + 60)
def test_nan_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """Rank 1's loss turns NaN above NAN_ABOVE_LR while rank 0's stays finite: both stop the sweep at that
    step (no rank is left waiting in a collective: the run ends), agree on bounds below it, and train on."""
    reports = launch("ddp_fork", tmp_path, *FIT_ARGS, "--nan-rank", "1", "--nan-above-lr", str(NAN_ABOVE_LR))
    rt = reports[0]["range_test"]
    stop = len(rt["lrs"]) - 1
    assert rt["stopped_early"] and "nan" in rt["stop_reason"], rt["stop_reason"]
    assert rt["lrs"][stop] > NAN_ABOVE_LR >= rt["lrs"][stop - 1]
    assert rt["max_lr"] < NAN_ABOVE_LR
    rank0_sweep = reports[0]["local_losses"][: stop + 1]
    rank1_sweep = reports[1]["local_losses"][: stop + 1]
    assert all(math.isfinite(loss) for _, loss in rank0_sweep), "rank 0 never saw a NaN itself"
    assert math.isnan(rank1_sweep[stop][1]) and all(math.isfinite(loss) for _, loss in rank1_sweep[:stop])
    assert_ranks_agree(reports)


# ----------------------------------------------------------------------------- sharded strategies
@pytest.mark.timeout(TIMEOUT + 60)
def test_sharded_strategy_is_refused_before_any_step(tmp_path: Path) -> None:
    """``Trainer(strategy="fsdp")`` refuses ``accelerator="cpu"`` and torch's FSDP needs an accelerator, so
    this uses a real FSDPStrategy subclass on CPU: the callback refuses it in ``setup``, before FSDP wraps
    the model (which would fail here with torch's own error) and before any training step, on both ranks."""
    reports = launch("fsdp_cpu", tmp_path, "--bounds", "auto", expect_rc=3)
    for r in reports:
        assert r["error_type"] == "ValueError", r.get("traceback")
        assert "sharded strategy CPUFSDPStrategy (a FSDPStrategy)" in r["error"]
        assert "base_lr=None, max_lr=None" in r["error"] and "`base_lr` and `max_lr`" in r["error"]
        assert r["training_step_calls"] == 0


# ----------------------------------------------------------------------------- cycle length per rank
@pytest.mark.timeout(TIMEOUT + 60)
def test_cycle_length_uses_per_rank_batches(ddp_run: list[dict[str, Any]],
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Same per-rank batch size: doubling the world size halves the batches per rank, so the cycle
    (in optimizer steps, derived from ``half_cycle_epochs``) halves too; it stays 1 epoch long."""
    single = cached("single_b32", tmp_path_factory, "auto", *FIT_ARGS, devices=1)[0]
    double = ddp_run[0]
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert single["num_training_batches"] == 8 and double["num_training_batches"] == 4
    assert single["steps_per_epoch"] == 2 * double["steps_per_epoch"]
    assert single["step_size_up"] == 2 * double["step_size_up"]
    assert single["step_size_up"] / single["steps_per_epoch"] == double["step_size_up"] / double["steps_per_epoch"]


# ----------------------------------------------------------------------------- 1 rank vs 2 ranks
BOUNDS_RTOL = 1e-4  # documented in docs/multi_gpu.md
WEIGHTS_RTOL = 1e-4
WEIGHTS_ATOL = 1e-6


@pytest.mark.timeout(TIMEOUT + 60)
def test_two_ranks_match_one_rank_with_the_same_global_batch(ddp_run: list[dict[str, Any]],
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """2 ranks x batch 32 see, step for step, the samples of 1 rank x batch 64 (same sampler permutation),
    DDP averages the gradients and the range test averages the ranks' losses: the same curve, bounds,
    LR per step and final weights, up to float32 summation order."""
    single = cached("single_b64", tmp_path_factory, "auto", *FIT_ARGS[:-1], "64", devices=1)[0]
    double = ddp_run[0]
    assert single["num_training_batches"] == double["num_training_batches"] == 4
    assert single["range_test"]["lrs"] == double["range_test"]["lrs"]
    # Float32 summation order differs by ~1e-7 per step; the last point, where the sweep blew up (x100 in two
    # steps), amplifies it to 2e-5.
    losses_1, losses_2 = single["range_test"]["losses"], double["range_test"]["losses"]
    assert losses_1[:-1] == pytest.approx(losses_2[:-1], rel=1e-5)
    assert losses_1[-1] == pytest.approx(losses_2[-1], rel=BOUNDS_RTOL)
    assert single["base_lr"] == pytest.approx(double["base_lr"], rel=BOUNDS_RTOL)
    assert single["max_lr"] == pytest.approx(double["max_lr"], rel=BOUNDS_RTOL)
    assert single["lrs"] == pytest.approx(double["lrs"], rel=BOUNDS_RTOL)
    for name, values in single["weights"].items():
        assert values == pytest.approx(double["weights"][name], rel=WEIGHTS_RTOL, abs=WEIGHTS_ATOL), name


# ----------------------------------------------------------------------------- no collectives per step
@pytest.mark.timeout(TIMEOUT + 60)
def test_callback_adds_no_collective_to_training_steps(fork_run: list[dict[str, Any]],
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """Python-level torch.distributed calls counted on each rank, with and without the callback."""
    baseline = cached("fork_no_clr", tmp_path_factory, "ddp_fork", *FIT_ARGS, "--no-clr")
    for with_clr, without in zip(fork_run, baseline):
        c_with, c_without = with_clr["collectives"], without["collectives"]
        # The counter sees the callback's own collectives before training, exactly: per sweep step one loss
        # all-reduce (the global stop decision, carrying the SIGTERM flag too), which Lightning's
        # strategy.reduce precedes with a barrier; then one broadcast of rank 0's plan.
        steps = len(with_clr["range_test"]["lrs"])
        extra = {name: n - c_without["before_training_by_name"].get(name, 0)
                 for name, n in c_with["before_training_by_name"].items()}
        assert extra == {"all_reduce": steps, "barrier": steps, "broadcast_object_list": 1}
        # After train start: the same collectives with and without the callback, and none inside a step, but for
        # the divergence guard (on: the bounds came from the range test): one all_reduce per check, every
        # `check_every` (10) optimizer steps or at a cycle trough, outside the optimizer step.
        names = set(c_with["training_by_name"]) | set(c_without["training_by_name"])
        extra = {n: c_with["training_by_name"].get(n, 0) - c_without["training_by_name"].get(n, 0) for n in names}
        checks = extra.pop("all_reduce", 0)
        assert set(extra.values()) <= {0}, extra
        assert 0 < checks <= with_clr["global_step"] // 5 + 1, (checks, with_clr["global_step"])
        assert c_without["per_step"] == [0] * with_clr["global_step"]
        # Within a batch's hooks, the guard's checks only: at most one collective, at as many batches as checks.
        assert len(c_with["per_step"]) == with_clr["global_step"] and max(c_with["per_step"]) <= 1
        assert sum(c_with["per_step"]) <= checks


# ----------------------------------------------------------------------------- preemption and resume
@pytest.mark.timeout(2 * TIMEOUT + 60)
def test_resume_on_two_ranks_continues_the_uninterrupted_fit(fork_run: list[dict[str, Any]], tmp_path: Path) -> None:
    """A 2-rank job stopped after epoch 1 (as a requeued SLURM job is) and resumed from its checkpoint on 2
    ranks: every rank restores the bounds and step count, the range test does not run again, and the
    result is bitwise the uninterrupted 2-epoch fit's."""
    ckpt = tmp_path / "ckpt"
    first = launch("ddp_fork", tmp_path / "first", *FIT_ARGS, "--ckpt-dir", str(ckpt), "--stop-after-epochs", "1")
    assert first[0]["global_step"] == fork_run[0]["global_step"] // 2
    assert first[0]["range_test"] is not None
    resumed = launch("ddp_fork", tmp_path / "resumed", *FIT_ARGS, "--resume", str(ckpt / "last.ckpt"))
    full = fork_run[0]
    for r in resumed:
        assert r["sweep_training_steps"] == 0, "the range test ran again"
        assert r["range_test"] == full["range_test"]  # the checkpoint's result, not a new one
        for key in ("base_lr", "max_lr", "step_size_up", "global_step", "clr_steps"):
            assert r[key] == full[key], key
        assert r["lrs"] == full["lrs"][first[0]["global_step"]:]
        assert r["weights"] == full["weights"]


# ----------------------------------------------------------------------------- ranks that disagree
@pytest.mark.timeout(TIMEOUT + 60)
def test_every_rank_follows_rank_zeros_plan_when_their_settings_differ(tmp_path: Path) -> None:
    """Rank 1 is given another max_lr and half-cycle than rank 0: the plan is broadcast from rank 0, so both
    ranks step with rank 0's bounds and cycle (this fails if the broadcast is dropped)."""
    reports = launch("ddp", tmp_path, "--bounds", "explicit", "--rank-dependent", "--batch-size", "32")
    r0, r1 = reports
    assert r0["max_lr"] == pytest.approx(0.08) and r0["steps_per_epoch"] == 4 and r0["step_size_up"] == 4
    for key in ("base_lr", "max_lr", "step_size_up", "step_size_down", "lrs"):
        assert r1[key] == r0[key], key
    assert r1["weights"] == r0["weights"]


# ----------------------------------------------------------------------------- the example
@pytest.mark.timeout(TIMEOUT + 60)
def test_ddp_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    cmd = [sys.executable, str(ROOT / "examples" / "ddp_train.py"), "--devices", "2", "--strategy", "ddp_fork",
           "--max-epochs", "1", "--range-steps", "20", "--default-root-dir", str(tmp_path)]
    output = run_group([(cmd, clean_env())], tmp_path)[0]
    assert "world size 2: base_lr=" in output, output[-3000:]
    assert (tmp_path / "lightning_logs" / "version_0" / "lr_range_test.json").exists()
