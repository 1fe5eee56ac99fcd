"""What a reader is told exists does exist: every name of every ``__all__``, every import and dotted path that
the README and docs/*.md show, and every docstring example of the package runs."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

import lightning_clr

REPO = Path(lightning_clr.__file__).parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO / "lightning_clr").rglob("*.py")
    if p.stem != "__main__"
)
FROM_IMPORT = re.compile(r"from\s+(lightning_clr(?:\.\w+)*)\s+import\s+(\([^)]*\)|[\w ,]+)")
DOTTED = re.compile(r"\blightning_clr(?:\.\w+)+")


def _resolve(path: str) -> Any:
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(path)


def _documented() -> list[tuple[str, str]]:
    """(page, dotted path) for every ``from lightning_clr... import ...`` and every ``lightning_clr.x.y``."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for module, names in FROM_IMPORT.findall(text):
            for name in names.strip("()").replace("\n", " ").split(","):
                name = name.split(" as ")[0].strip()
                if name:
                    found.append((page.name, f"{module}.{name}"))
        found.extend((page.name, path.rstrip(".")) for path in DOTTED.findall(text))
    return sorted(set(found))


def test_the_pages_show_imports_at_all() -> None:
    """The reading above finds the documented paths (a changed page layout must not make the test empty)."""
    paths = {path for _, path in _documented()}
    assert {"lightning_clr.CyclicLearningRate", "lightning_clr.tune_cycle_length"} <= paths
    assert len(paths) > 10


@pytest.mark.parametrize("page,path", _documented())
def test_every_documented_import_path_exists(page: str, path: str) -> None:
    _resolve(path)


@pytest.mark.parametrize("module", MODULES)
def test_every_name_of_every_all_imports(module: str) -> None:
    mod = importlib.import_module(module)
    for name in getattr(mod, "__all__", []):
        assert getattr(mod, name) is not None or name.isupper(), f"{module}.{name}"


def test_the_root_exports_every_public_class_and_function_with_a_docstring() -> None:
    for name in lightning_clr.__all__:
        value = getattr(lightning_clr, name)
        assert name == "__version__" or value.__doc__, name
    assert set(lightning_clr.__all__) <= set(dir(lightning_clr))


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module: str) -> None:
    failed, _ = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert failed == 0, module
