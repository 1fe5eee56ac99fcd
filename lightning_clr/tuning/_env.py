"""Where a tuning run is: which process is rank 0 before any Trainer exists, whether the strategy trains in
child processes, and whether the Trainer's arguments make a distributed job. Read from the environment and the
Trainer's arguments only (torch is imported only to count GPUs).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lightning_clr._lightning import start_method

__all__ = ["distributed", "is_global_zero", "spawns"]


def is_global_zero() -> bool:
    """Rank 0 of the whole job, known before any Trainer exists (torchrun, SLURM, Lightning's own launcher)."""
    env = os.environ
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if key in env:
            return int(env[key]) == 0
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("LOCAL_RANK", "0")) == 0 and int(env.get("NODE_RANK", env.get("GROUP_RANK", "0"))) == 0


def spawns(strategy: Any) -> bool:
    """Whether the strategy trains in child processes that the parent's in-memory study cannot reach."""
    if isinstance(strategy, str):
        return any(word in strategy for word in ("spawn", "fork", "notebook"))
    return start_method(strategy) in ("spawn", "fork", "forkserver")


def distributed(trainer_kwargs: dict[str, Any]) -> bool:
    devices, nodes = trainer_kwargs.get("devices", "auto"), trainer_kwargs.get("num_nodes", 1)
    if devices in ("auto", -1, "-1", None):  # Lightning's default: every visible GPU
        accelerator = trainer_kwargs.get("accelerator", "auto")
        gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if gpu else 1
    many = devices not in (1, "1", [0]) or nodes not in (1, None)
    return many or int(os.environ.get("WORLD_SIZE", "1")) > 1
