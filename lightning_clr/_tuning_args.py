"""Arguments of :func:`lightning_clr.tune_cycle_length`: validation before any training step, the search space,
Smith's warm-start values, and which process is rank 0 before any Trainer exists."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any

from lightning_clr._validation import ArgumentError
from lightning_clr.range_test import RangeTestConfig
from lightning_clr.schedule import MODES


def _is_global_zero() -> bool:
    """Rank 0 of the whole job, known before any Trainer exists (torchrun, SLURM, Lightning's own launcher)."""
    env = os.environ
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if key in env:
            return int(env[key]) == 0
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("LOCAL_RANK", "0")) == 0 and int(env.get("NODE_RANK", env.get("GROUP_RANK", "0"))) == 0


def _spawns(strategy: Any) -> bool:
    """Whether the strategy trains in child processes that the parent's in-memory study cannot reach."""
    if isinstance(strategy, str):
        return any(word in strategy for word in ("spawn", "fork", "notebook"))
    return getattr(strategy, "_start_method", "popen") in ("spawn", "fork", "forkserver")


def _distributed(trainer_kwargs: dict[str, Any]) -> bool:
    devices, nodes = trainer_kwargs.get("devices", "auto"), trainer_kwargs.get("num_nodes", 1)
    if devices in ("auto", -1, "-1", None):  # Lightning's default: every visible GPU
        import torch

        accelerator = trainer_kwargs.get("accelerator", "auto")
        gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if gpu else 1
    many = devices not in (1, "1", [0]) or nodes not in (1, None)
    return many or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _heuristic_half_cycles(low: int, high: int, step: int) -> list[int]:
    """Smith's 2, 4 and 8 epochs, moved onto the grid ``low..high`` (step ``step``), without duplicates."""
    values: list[int] = []
    for h in (2, 4, 8):
        h = min(max(h, low), high)
        h = low + round((h - low) / step) * step
        h = min(h, high - (high - low) % step)
        if h not in values:
            values.append(h)
    return values


def _search_space(optuna: Any, args: Any) -> dict[str, Any]:
    space: dict[str, Any] = {}  # the half-cycle last: a repeat is judged with the other values known
    if len(args.modes) > 1:
        space["mode"] = optuna.distributions.CategoricalDistribution(args.modes)
    if args.min_max_lr_scale != args.max_max_lr_scale:
        space["max_lr_scale"] = optuna.distributions.FloatDistribution(
            args.min_max_lr_scale, args.max_max_lr_scale, log=True
        )
    space["half_cycle_epochs"] = optuna.distributions.IntDistribution(
        args.min_half_cycle_epochs, args.max_half_cycle_epochs, step=args.half_cycle_step
    )
    return space


def _validate(**a: Any) -> SimpleNamespace:
    """Check every argument before any training step; errors name the argument and its value."""

    def bad(name: str, want: str) -> ValueError:
        err = ArgumentError(name, a[name], want)  # the CLI reads the flag off err.argument
        err.args = (f"tune_cycle_length: {err}",)
        return err

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_pos(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    if not callable(a["model"]):
        raise bad("model", "a LightningModule class or a factory returning one")
    if a["datamodule"] is not None and not callable(a["datamodule"]):
        raise bad("datamodule", "None, a LightningDataModule class or a factory returning one")
    for name in ("model_kwargs", "datamodule_kwargs", "trainer_kwargs"):
        if a[name] is not None and not isinstance(a[name], dict):
            raise bad(name, "a dict of keyword arguments or None")
    for name, low in (("n_trials", 1), ("min_half_cycle_epochs", 1), ("half_cycle_step", 1), ("n_startup_trials", 0)):
        if not is_int(a[name]) or a[name] < low:
            raise bad(name, f"an int >= {low}")
    if a["max_epochs"] is not None and (not is_int(a["max_epochs"]) or a["max_epochs"] < 1):
        raise bad("max_epochs", "None or an int >= 1")
    if not is_int(a["max_half_cycle_epochs"]) or a["max_half_cycle_epochs"] < a["min_half_cycle_epochs"]:
        raise bad("max_half_cycle_epochs", f"an int >= min_half_cycle_epochs ({a['min_half_cycle_epochs']!r})")
    if (a["max_half_cycle_epochs"] - a["min_half_cycle_epochs"]) % a["half_cycle_step"]:
        raise bad("half_cycle_step", f"a divisor of max_half_cycle_epochs - min_half_cycle_epochs"
                                     f" ({a['max_half_cycle_epochs']} - {a['min_half_cycle_epochs']})")
    modes = a["modes"] if a["modes"] is not None else ["triangular"]
    if not isinstance(modes, (list, tuple)) or not modes or any(m not in MODES for m in modes):
        raise bad("modes", f"a non-empty list of {MODES}")
    if "exp_range" in modes:
        raise bad("modes", "'triangular' and/or 'triangular2': 'exp_range' needs a gamma fitted to the run length")
    for name in ("min_max_lr_scale", "max_max_lr_scale", "heartbeat_interval"):
        if not is_pos(a[name]):
            raise bad(name, "a finite number > 0")
    if a["max_max_lr_scale"] < a["min_max_lr_scale"]:
        raise bad("max_max_lr_scale", f"a number >= min_max_lr_scale ({a['min_max_lr_scale']!r})")
    for name in ("base_lr", "max_lr", "timeout"):
        if a[name] is not None and not is_pos(a[name]):
            raise bad(name, "None or a finite number > 0")
    if a["base_lr"] is not None and a["max_lr"] is not None and a["max_lr"] <= a["base_lr"]:
        raise bad("max_lr", f"greater than base_lr ({a['base_lr']!r})")
    grace = a["grace_period"]
    if grace is not None and (not is_pos(grace) or grace <= a["heartbeat_interval"]):
        raise bad("grace_period", f"None or a number > heartbeat_interval ({a['heartbeat_interval']!r})")
    if a["range_test"] is not None and not isinstance(a["range_test"], RangeTestConfig):
        raise bad("range_test", "None or a RangeTestConfig")
    if a["range_test_per_trial"] and a["min_max_lr_scale"] != a["max_max_lr_scale"]:
        raise bad("range_test_per_trial", "False when the max_lr multiplier is tuned (it scales the shared bounds)")
    if not isinstance(a["monitor"], str) or not a["monitor"]:
        raise bad("monitor", "the name of a logged metric")
    for name, choices in (("direction", ("minimize", "maximize")), ("sampler", ("tpe", "random")),
                          ("pruner", ("cycle_median", "none"))):
        if a[name] not in choices:
            raise bad(name, f"one of {choices}")
    for name in ("storage", "study_name"):
        if a[name] is not None and (not isinstance(a[name], str) or not a[name]):
            raise bad(name, "None or a non-empty string")
    for name in ("range_test_per_trial", "distinct", "warm_start", "logger", "plot", "progress_bar"):
        if not isinstance(a[name], bool):
            raise bad(name, "True or False")
    if not is_int(a["seed"]):
        raise bad("seed", "an int")
    if not isinstance(a["output_dir"], str) or not a["output_dir"]:
        raise bad("output_dir", "a directory path")
    trainer_kwargs = a["trainer_kwargs"] or {}
    user_max_epochs = trainer_kwargs.get("max_epochs")
    if a["max_epochs"] is None and user_max_epochs is not None and (not is_int(user_max_epochs) or user_max_epochs < 1):
        raise ValueError(
            "tune_cycle_length: every trial needs a finite budget; `trainer_kwargs['max_epochs']` must be an int >= 1"
            f" (or pass `max_epochs`), got {user_max_epochs!r}"
        )
    if a["timeout"] is not None and _distributed(trainer_kwargs):
        raise bad("timeout", "None with several devices or nodes (the ranks must run the same number of trials)")
    if trainer_kwargs.get("check_val_every_n_epoch", 1) != 1 or trainer_kwargs.get("max_steps", -1) not in (-1, None):
        raise ValueError(
            "tune_cycle_length: trials validate every epoch and end after whole cycles; remove"
            f" check_val_every_n_epoch={trainer_kwargs.get('check_val_every_n_epoch')!r} /"
            f" max_steps={trainer_kwargs.get('max_steps')!r} from `trainer_kwargs`"
        )
    return SimpleNamespace(**{**a, "modes": list(modes)})
