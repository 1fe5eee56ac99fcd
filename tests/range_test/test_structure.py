"""The range-test subpackage's shape: data flows one way (no module imports its caller, no import hidden in a
function to dodge a cycle), the public names, and the size limits of the project's standards."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import lightning_clr.range_test as range_test

PACKAGE = Path(range_test.__file__).parent
# Who may import whom, inside the subpackage: the runner calls the sweep, the sweep uses the rest.
ALLOWED = {
    "_runner": {"_sweep", "_types"},
    "_sweep": {"_guards", "_rules", "_signals", "_snapshot", "_step", "_types"},
    "_signals": set(),
    "_types": {"_plot", "_rules"},
    "_step": set(),
    "_guards": set(),
    "_snapshot": set(),
    "_rules": {"_reading", "_smoothing"},
    "_reading": {"_smoothing"},
    "_smoothing": set(),
    "_plot": set(),
}
OPTIONAL = {"matplotlib", "tqdm"}  # extras imported lazily, inside the function that needs them


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, inside a function) for every import of ``tree``."""
    out = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    type_only = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    skipped = {id(n) for block in type_only for n in ast.walk(block)}  # imports for annotations only
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in nested))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, id(node) in nested) for alias in node.names)
    return out


def test_data_flows_one_way_and_no_import_hides_in_a_function() -> None:
    for path in sorted(PACKAGE.glob("_*.py")):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for module, in_function in _imports(tree):
            if module.startswith("lightning_clr.range_test."):
                used = module.rsplit(".", 1)[1]
                assert used in ALLOWED[path.stem], f"{path.name} imports {used}"
            assert module != "lightning_clr.range_test", f"{path.name} imports the package that imports it"
            if in_function:
                where = f"{path.name}: import of {module} in a function"
                assert module.split(".")[0] in OPTIONAL | {"lightning", "doctest"}, where


def test_every_module_imports_on_its_own_and_the_public_names_are_exported() -> None:
    for stem in ALLOWED:
        importlib.import_module(f"lightning_clr.range_test.{stem}")
    assert sorted(range_test.__all__) == sorted([
        "RangeTestConfig", "RangeTestResult", "lr_range_test", "plot_range_test", "refuse_sharded",
        "run_range_test", "save_result",
    ])
    for name in range_test.__all__:
        assert getattr(range_test, name).__doc__, name


def test_no_file_over_400_lines_and_no_function_over_60_lines_of_code() -> None:
    """Docstrings are not counted in a function's length."""
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= 400, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                length = (body[-1].end_lineno or 0) - body[0].lineno + 1 if body else 0
                assert length <= 60, f"{path.name}: {node.name} has {length} lines of code"


def test_docstring_examples_run() -> None:
    import doctest

    for stem in [*ALLOWED, "__init__"]:
        module = importlib.import_module("lightning_clr.range_test" + ("" if stem == "__init__" else f".{stem}"))
        failed, tried = doctest.testmod(module)
        assert tried > 0 and failed == 0, module.__name__
