"""One place that checks user input: every error names the argument and its value.

Torch-free and Lightning-free (numbers from numpy and 0-d torch tensors are recognised by duck typing), so the
pure schedule module, the settings objects and the CLI all share it. An :class:`ArgumentError` carries
``argument`` and ``value`` as attributes, so a caller such as the CLI can map it to its flag without parsing
the message.

Example:
    >>> positive_float("max_lr", 0.1)
    0.1
    >>> try:
    ...     positive_float("max_lr", -1)
    ... except ArgumentError as err:
    ...     (err.argument, err.value)
    ('max_lr', -1)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional

__all__ = [
    "ArgumentError",
    "MAX_STEPS",
    "boolean",
    "choice",
    "float_in",
    "int_in",
    "learning_rate",
    "number",
    "positive_float",
    "short_repr",
]

# An upper bound for anything counted in optimizer steps: 10**9 steps is years of training at 30 steps/s,
# and float arithmetic of the schedule stays exact to well below one step there.
MAX_STEPS = 10**9
# Learning rates outside this range are typos, not settings: above MAX_LR a parameter update overflows float32
# (torch's unnamed "value cannot be converted to type float without overflow"), and below MIN_LR the ratio of
# a sweep's bounds overflows a float (NaN and infinite LRs).
MIN_LR = 1e-20
MAX_LR = 1e6
SHOWN = 200  # characters of a refused value echoed into an error message


def short_repr(value: Any, limit: int = SHOWN) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a huge value is not echoed whole into a message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...<{len(text)} characters>"


class ArgumentError(ValueError, TypeError):
    """A bad argument value. Subclasses both ``ValueError`` and ``TypeError``.

    Attributes:
        argument: The argument's name as the user wrote it (``"max_lr"``, ``"range_test.num_steps"``).
        value: The value that was refused.
    """

    def __init__(self, argument: str, value: Any, requirement: str, detail: str = "") -> None:
        self.argument = argument
        self.value = value
        self.requirement = requirement
        message = f"`{argument}` must be {requirement}, got {short_repr(value)}"
        super().__init__(message + (f": {detail}" if detail else ""))


def _scalar(value: Any) -> Any:
    """A numpy scalar or a 0-d (one-element) tensor as a plain Python number; anything else unchanged."""
    if isinstance(value, (bool, int, float)):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__.startswith("bool"):
        return bool(value)
    item = getattr(value, "item", None)
    shape = getattr(value, "shape", None)
    if callable(item) and shape is not None and tuple(shape) == ():
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def number(name: str, value: Any, requirement: str = "a number") -> float:
    """``value`` as a float: Python, numpy and 0-d torch numbers are accepted; ``bool`` is not."""
    plain = _scalar(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Real):
        raise ArgumentError(name, value, requirement)
    return float(plain)


def finite_float(name: str, value: Any) -> float:
    """A finite number (any sign)."""
    out = number(name, value, "a finite number")
    if not math.isfinite(out):
        raise ArgumentError(name, value, "a finite number")
    return out


def positive_float(name: str, value: Any) -> float:
    """A finite number > 0."""
    requirement = "a finite number > 0"
    out = number(name, value, requirement)
    if not math.isfinite(out) or out <= 0:
        raise ArgumentError(name, value, requirement)
    return out


def learning_rate(name: str, value: Any) -> float:
    """A finite number > 0 that is a plausible learning rate: in ``[MIN_LR, MAX_LR]``."""
    out = positive_float(name, value)
    if not MIN_LR <= out <= MAX_LR:
        raise ArgumentError(name, value, f"a learning rate in [{MIN_LR:g}, {MAX_LR:g}]")
    return out


def float_in(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A number in an interval, e.g. ``float_in("gamma", g, 0, 1, low_open=True)`` for (0, 1]."""
    requirement = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    out = number(name, value, f"a number {requirement}")
    below = out <= low if low_open else out < low
    above = out >= high if high_open else out > high
    if math.isnan(out) or below or above:
        raise ArgumentError(name, value, f"a number {requirement}")
    return out


def int_in(name: str, value: Any, low: int, high: Optional[int] = None, what: str = "") -> int:
    """A whole number (Python, numpy or 0-d tensor integer; not a float, not a bool) in ``[low, high]``."""
    span = f">= {low}" if high is None else f"in [{low}, {high:.3g}]" if high >= 10**6 else f"in [{low}, {high}]"
    requirement = f"a whole number {span}" + (f" ({what})" if what else "")
    plain = _scalar(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Integral):
        raise ArgumentError(name, value, requirement)
    out = int(plain)
    if out < low or (high is not None and out > high):
        raise ArgumentError(name, value, requirement)
    return out


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` (also numpy's); a string such as ``"no"`` is refused, not read as truthy."""
    plain = _scalar(value)
    if not isinstance(plain, bool):
        raise ArgumentError(name, value, "True or False")
    return plain


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ArgumentError(name, value, "one of " + ", ".join(map(repr, options)))
    return value
