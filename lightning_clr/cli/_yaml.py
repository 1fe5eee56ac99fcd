"""A guarded YAML loader for the ``lightning-clr`` command: a document over a size limit, nested too deep, or
whose aliases expand to too many nodes (a "billion laughs" alias bomb) is refused in one error line before it is
built, instead of a parse that never ends or an error line of megabytes.

It is jsonargparse's own YAML loader behind the checks, registered under its own parser mode, so only the
``lightning-clr`` parsers use it.

Example:
    >>> guarded_yaml_load("max_lr: 0.1")
    {'max_lr': 0.1}
"""

from __future__ import annotations

from typing import Any

from lightning_clr.cli._errors import fail

__all__ = ["PARSER_MODE", "guarded_yaml_load", "register"]

PARSER_MODE = "lightning_clr_yaml"
MAX_BYTES = 1_000_000  # a configuration is a few kB
MAX_NODES = 10_000  # after expanding aliases; a configuration has a few hundred
MAX_DEPTH = 64


class YamlLimitError(ValueError):
    """A YAML document over one of the limits."""


def _expanded_nodes(node: Any, depth: int, memo: dict[int, int]) -> int:
    """The node count of ``node`` with every alias expanded, computed once per node (aliases share nodes)."""
    if depth > MAX_DEPTH:
        raise YamlLimitError(f"a YAML document nested deeper than {MAX_DEPTH} levels is refused")
    key = id(node)
    if key not in memo:
        children: list[Any] = []
        if isinstance(node.value, list):
            for item in node.value:
                children.extend(item if isinstance(item, tuple) else (item,))
        memo[key] = 1 + sum(_expanded_nodes(child, depth + 1, memo) for child in children)
    return memo[key]


def check_yaml(text: str) -> None:
    """Raise :class:`YamlLimitError` for a document over ``MAX_BYTES``, ``MAX_DEPTH`` or ``MAX_NODES``."""
    import yaml

    if len(text) > MAX_BYTES:
        raise YamlLimitError(f"a YAML document of {len(text)} characters is refused (at most {MAX_BYTES})")
    if "&" not in text and "*" not in text and text.count("\n") < MAX_NODES:
        return  # no anchors or aliases: the size limits it
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # not YAML: jsonargparse's loader reports it as it always has
    except RecursionError:
        raise YamlLimitError(f"a YAML document nested deeper than {MAX_DEPTH} levels is refused") from None
    if root is not None:
        count = _expanded_nodes(root, 0, {})
        if count > MAX_NODES:
            raise YamlLimitError(
                f"a YAML document whose aliases expand to {count:.3g} nodes is refused (at most {MAX_NODES})"
            )


def guarded_yaml_load(stream: str) -> Any:
    """jsonargparse's YAML loader, after :func:`check_yaml`."""
    if isinstance(stream, str):
        try:
            check_yaml(stream)
        except YamlLimitError as err:  # one line and exit 2: jsonargparse would retry it as a plain string
            fail(f"YAML input refused: {err}")
    return _yaml_loader()(stream)


def _yaml_loader() -> Any:
    """jsonargparse's own YAML loader: ``get_loader`` since 4.28, its ``loaders`` table at the 4.27 floor."""
    try:
        from jsonargparse import get_loader
    except ImportError:
        from jsonargparse._loaders_dumpers import loaders

        return loaders["yaml"]
    return get_loader("yaml")


def register() -> str:
    """Register the guarded loader with jsonargparse (once) and return its parser mode."""
    import yaml
    from jsonargparse import set_loader

    set_loader(PARSER_MODE, guarded_yaml_load, exceptions=(yaml.YAMLError,))
    return PARSER_MODE
