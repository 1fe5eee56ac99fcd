"""Where a tuning run is, read from the Trainer's arguments and the environment."""

from __future__ import annotations

import pytest
from lightning.pytorch.strategies import DDPStrategy

from lightning_clr.tuning._env import distributed, is_global_zero, spawns


@pytest.mark.parametrize(
    "strategy, expected",
    [("ddp", False), ("ddp_spawn", True), ("ddp_fork", True), ("ddp_notebook", True), ("auto", False),
     (None, False), (DDPStrategy(start_method="spawn"), True), (DDPStrategy(), False)],
)
def test_spawns_is_true_for_strategies_that_train_in_child_processes(strategy, expected: bool) -> None:
    assert spawns(strategy) is expected


def test_distributed_reads_devices_nodes_and_the_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed({"accelerator": "cpu"})
    assert not distributed({"devices": 1, "num_nodes": 1})
    assert distributed({"devices": 2})
    assert distributed({"num_nodes": 2})
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun, SLURM: the launcher says so
    assert distributed({"devices": 1})


def test_is_global_zero_reads_the_launchers_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK",
                "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert is_global_zero()
    monkeypatch.setenv("NODE_RANK", "1")  # local rank 0 of the second node
    assert not is_global_zero()
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert is_global_zero()
    monkeypatch.setenv("RANK", "1")  # RANK first, whatever else is set
    assert not is_global_zero()
