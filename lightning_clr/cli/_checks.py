"""The checks of the ``lightning-clr`` command's callback flags, right after parsing and before anything is built:
each bad value is one error line naming its flag (``--clr.max_lr: ...``, ``--trainer.callbacks.mode: ...``).

Example:
    >>> validate_clr_args("--clr", {"max_lr": 0.1, "mode": "triangular2"})
"""

from __future__ import annotations

import re
from typing import Any

from lightning_clr._validation import ArgumentError, short_repr
from lightning_clr.callback import CyclicLearningRate
from lightning_clr.cli._errors import fail, join_flag
from lightning_clr.engine._divergence import DivergenceGuard
from lightning_clr.engine._writer import check_scale_fn
from lightning_clr.range_test import RangeTestConfig
from lightning_clr.schedule import import_scale_fn

__all__ = ["callback_args", "validate_clr_args"]


def callback_args(namespace: Any, prefix: str = "--clr") -> dict[str, Any]:
    """The parsed arguments of a callback as a dict; anything but a mapping (``clr: [1, 2, 3]`` in a YAML file)
    is one error line naming ``prefix``."""
    if hasattr(namespace, "as_dict"):
        return namespace.as_dict()
    if namespace is None or isinstance(namespace, dict):
        return dict(namespace or {})
    fail(f"{prefix}: expected a mapping of CyclicLearningRate's arguments, got {short_repr(namespace)}")


def _flag_for(prefix: str, err: Exception) -> str:
    """The flag of a check that does not (yet) raise ArgumentError: its first `name` in backticks."""
    names = re.findall(r"`(\w+)`", str(err))
    return f"{prefix}.{names[0]}" if names else prefix


def _check(prefix: str, build: Any, **kwargs: Any) -> Any:
    """``build(**kwargs)``, with a bad value turned into a CLI error naming its flag under ``prefix``."""
    try:
        return build(**kwargs)
    except ArgumentError as err:
        fail(f"{join_flag(prefix, err.argument)}: {err}")
    except (ValueError, TypeError) as err:
        fail(f"{_flag_for(prefix, err)}: {err}")


def validate_clr_args(prefix: str, init_args: dict[str, Any]) -> None:
    """Build a :class:`CyclicLearningRate` from parsed ``init_args`` and turn a bad value into a CLI error
    naming its flag (``prefix`` is the flag of the callback, e.g. ``--clr`` or ``--trainer.callbacks``)."""
    kwargs = dict(init_args)
    range_test = kwargs.get("range_test")
    if isinstance(range_test, dict):
        fields = {k: v for k, v in range_test.items() if k != "metric"}  # a metric class spec is jsonargparse's
        kwargs["range_test"] = _check(f"{prefix}.range_test", RangeTestConfig, **fields)
    guard = kwargs.get("guard")
    if isinstance(guard, dict):
        kwargs["guard"] = _check(f"{prefix}.guard", DivergenceGuard, **guard)
    path = kwargs.get("scale_fn")
    if isinstance(path, str):
        try:
            fn = import_scale_fn(path)
        except ArgumentError as err:
            fail(f"{join_flag(prefix, err.argument)}: {err}")
        except (ImportError, AttributeError, ValueError, TypeError) as err:
            fail(f"{prefix}.scale_fn: cannot import {short_repr(path)}: {err}")
        _probe_scale_fn(prefix, fn, kwargs.get("scale_mode") or "cycle")
    elif path is not None:
        kwargs["scale_fn"] = None  # a callable resolved by jsonargparse; nothing to check here
    _check(prefix, CyclicLearningRate, **kwargs)


def _probe_scale_fn(prefix: str, fn: Any, scale_mode: str) -> None:
    """Evaluate an imported ``scale_fn`` on the first values it will receive, as the fit start would: a function
    that raises or returns no finite number >= 0 is one error line now, not a traceback at fit start."""
    try:
        check_scale_fn(fn, scale_mode if scale_mode in ("cycle", "iterations") else "cycle", 1, 4)
    except ValueError as err:
        fail(f"{prefix}.scale_fn: {err}")
