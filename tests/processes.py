"""Helpers for tests that start real processes (DDP ranks, torchrun, tuning workers)."""

from __future__ import annotations

import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

# Variables that would make Lightning think it runs under another launcher or cluster.
LAUNCH_ENV_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PL_", "LSB_", "OMPI_", "PMI_", "KUBERNETES_")
LAUNCH_ENV_KEYS = (
    "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "NODE_RANK", "JSM_NAMESPACE_SIZE",
)


def free_port() -> int:
    """A free port BELOW the kernel's ephemeral range. Port 0 would hand out an ephemeral port, which gloo's
    own connections (of this run or of other runs on the machine) may take before the rank binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(20001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables, with the repo on PYTHONPATH, one thread
    per process and a fresh MASTER_PORT."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS and not k.startswith(LAUNCH_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env.update(extra)
    return env


def wait_until(done: Callable[[], bool], what: str, timeout: float = 200.0, every: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            raise SystemExit(f"{Path(sys.argv[0]).name}: gave up waiting for {what}")
        time.sleep(every)


def start_together(barrier: Path, n: int) -> None:
    """Return once ``n`` workers (this one included, torch and Lightning imported) are ready: within about 5 ms of
    one another, however long each took to start."""
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / f"ready_{os.getpid()}").touch()
    wait_until(lambda: len(list(barrier.iterdir())) >= n, f"{n} workers in {barrier}", every=0.005)
