"""One-line errors for the ``lightning-clr`` command: ``lightning-clr: error: --FLAG: reason``, exit status 2.

Two sources, two readers:

- jsonargparse's own parse errors (a type, a literal choice, a class path that does not import) carry no
  structured key, only a nested text (``Parser key "clr.range_test": ... Parser key "rule": ...``). The
  chain of ``Parser key`` names along the first alternative gives the full flag, and the innermost reason
  gives the short message; :func:`shorten_parse_error` does that and nothing else.
- lightning_clr's own checks raise :class:`lightning_clr._validation.ArgumentError`, whose ``argument``
  attribute names the argument; :func:`join_flag` puts it under the flag prefix the CLI knows it came from.

Example:
    >>> shorten_parse_error('Parser key "clr.mode":\\n  Expected a typing.Literal[\\'a\\', \\'b\\']. Got value: c')
    "--clr.mode: expected one of 'a', 'b', got 'c'"
    >>> join_flag("--clr.range_test", "range_test.num_steps")
    '--clr.range_test.num_steps'
"""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn, Optional

from lightning_clr._validation import short_repr

__all__ = ["fail", "join_flag", "shorten_parse_error"]

PROG = "lightning-clr"
_KEY = re.compile(r'Parser key "([^"]+)"(?::\s*(.*))?$')
_EXPECTED = re.compile(r"Expected an? (.+?)\. Got value: (.*)$")
_CLASS_PATH = re.compile(r"^- Problem with given class_path '([^']+)':\s*$")
_SUBTYPES = re.compile(r"^Subtypes: \[(.*)\]$")
_GIVEN = re.compile(r"^Given value: (.*)$")


MAX_MESSAGE = 600  # characters: a huge value given on the command line or in a file is not echoed whole


def fail(message: str) -> NoReturn:
    """Print ``message`` as one command-line error line (no traceback, no usage) and exit with status 2."""
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE:
        message = f"{message[: MAX_MESSAGE - 40]}... <{len(message)} characters in all>"
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def debug() -> bool:
    """``JSONARGPARSE_DEBUG`` set: show the full error and traceback instead of the one line."""
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in ("", "0", "false", "no")


def join_flag(prefix: str, argument: str) -> str:
    """The flag of ``argument`` under ``prefix``; a leading part that repeats the prefix's last is dropped."""
    last = prefix.rsplit(".", 1)[-1].lstrip("-")
    if argument.startswith(last + "."):
        argument = argument[len(last) + 1 :]
    return f"{prefix}.{argument}" if prefix else f"--{argument}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _type_name(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]*\.)?(\w+)'>", r"\1", text.strip())
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if literal:
        return "one of " + literal.group(1)
    return re.sub(r"(?:[\w.]*\.)?NoneType|\bNone\b", "null", text)


def _split_types(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [_type_name(p) for p in parts if p.strip()]


def _reason(block: list[str]) -> str:
    lines = [line.strip() for line in block if line.strip()]
    for i, line in enumerate(lines):  # a class path that does not import: the import error says why
        match = _CLASS_PATH.match(line)
        if match and i + 1 < len(lines) and not _KEY.search(lines[i + 1]):
            return f"cannot use {match.group(1)!r}: {lines[i + 1]}"
    for line in lines:
        match = _EXPECTED.search(line)
        if match:
            return f"expected {_type_name(match.group(1))}, got {short_repr(match.group(2))}"
    subtypes = next((m.group(1) for m in map(_SUBTYPES.match, lines) if m), None)
    given = next((m.group(1) for m in map(_GIVEN.match, reversed(lines)) if m), None)
    if subtypes is not None:
        names = _split_types(subtypes)
        wanted = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        return f"expected {wanted}" + (f", got {short_repr(given)}" if given is not None else "")
    return lines[0] if lines else "invalid value"


def shorten_parse_error(message: str, subcommands: tuple[str, ...] = ()) -> str:
    """jsonargparse's multi-line error as ``--full.flag: reason`` (or its first line when it names no key)."""
    lines = message.splitlines()
    keys: list[str] = []
    start: Optional[int] = None
    level = -1
    for i, line in enumerate(lines):
        match = _KEY.search(line)
        if match is None:
            continue
        if _indent(line) <= level:
            break  # a key of another alternative
        keys.append(match.group(1))
        start, level = i, _indent(line)
    if start is None:
        first = next((line.strip() for line in lines if line.strip()), "invalid arguments")
        for name in subcommands:  # jsonargparse lists the subcommand among the unrecognized arguments
            first = first.replace(f"unrecognized arguments: {name} ", "unrecognized arguments: ")
        return first
    block = [_KEY.search(lines[start]).group(2) or ""]  # type: ignore[union-attr]
    for line in lines[start + 1 :]:
        if line.strip() and _indent(line) <= level:
            break
        block.append(line)
    flag = ".".join(keys)
    for name in subcommands:
        if flag.startswith(name + "."):
            flag = flag[len(name) + 1 :]
    return f"--{flag}: {_reason(block)}"
