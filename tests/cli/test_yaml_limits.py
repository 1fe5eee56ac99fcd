"""The guarded YAML loader of the lightning-clr command (issue 21, item 10): alias bombs, deep nesting and huge
documents are refused quickly; ordinary configurations load as jsonargparse's own loader loads them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lightning_clr.cli._yaml import MAX_BYTES, YamlLimitError, check_yaml, guarded_yaml_load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_clr_config.yaml"


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9, 30])
def test_an_alias_bomb_is_refused_at_once(levels: int) -> None:
    start = time.perf_counter()
    with pytest.raises(YamlLimitError, match="aliases expand to"):
        check_yaml(_bomb(levels))
    assert time.perf_counter() - start < 2.0


def test_deep_nesting_and_huge_documents_are_refused() -> None:
    with pytest.raises(YamlLimitError, match="nested deeper"):
        check_yaml("&a " + "[" * 200 + "]" * 200)
    with pytest.raises(YamlLimitError, match="characters is refused"):
        check_yaml("a: " + "x" * (MAX_BYTES + 1))


def test_ordinary_documents_load_as_before() -> None:
    from lightning_clr.cli._yaml import _yaml_loader

    text = EXAMPLE.read_text()
    assert guarded_yaml_load(text) == _yaml_loader()(text)
    assert guarded_yaml_load("base: &b 0.1\nmax_lr: *b") == {"base": 0.1, "max_lr": 0.1}
