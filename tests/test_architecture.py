"""The package's shape, read off its source: data flows one way between the layers (callback -> engine -> range
test -> schedule, never back; tuning and the CLI on top; the root helpers under everything), inside the range-test
subpackage too; no import hides in a function except an optional extra's; the size limits of the project's
standards; ``lightning_clr.schedule`` stays free of torch and Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import lightning_clr

PACKAGE = Path(lightning_clr.__file__).parent
ROOT_HELPERS = {"_validation", "_compat", "_lightning", "_outputs", "_quiet"}
# The layers, lowest first: a module imports modules of its own layer and of the layers below it, never above.
LAYERS = ["helpers", "schedule", "range_test", "engine", "callback", "cycle_end", "tuning", "cli"]
# Optional dependencies (the package's extras, and tqdm when it is there): imported where they are used, so that
# the package imports without them.
OPTIONAL = {"matplotlib", "optuna", "jsonargparse", "yaml", "wandb", "mlflow", "tqdm"}  # yaml: jsonargparse's
# Inside the range test: the runner calls the sweep, the sweep uses the rest.
RANGE_TEST = {
    "__init__": {"_guards", "_plot", "_runner", "_types"},
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
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import of ``tree``, except those under ``TYPE_CHECKING``
    (annotations only). ``from pkg import name`` gives ``pkg.name`` where that is a module of ours."""
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    type_only = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    skipped = {id(n) for block in type_only for n in ast.walk(block)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"relative import of {node.module}"
            names = [f"{node.module}.{a.name}" for a in node.names]
            modules = [n for n in names if n in MODULES]
            out.extend((m, id(node) in nested) for m in modules or [node.module])
        elif isinstance(node, ast.Import):
            out.extend((alias.name, id(node) in nested) for alias in node.names)
    return out


def _layer(module: str) -> int:
    """The layer of one of our modules (``lightning_clr.tuning._trial`` -> tuning)."""
    parts = module.split(".")
    if len(parts) == 1:
        raise AssertionError("the package root (its lazy public names) is the top: no module imports it")
    name = "helpers" if parts[1] in ROOT_HELPERS else parts[1]
    return LAYERS.index(name)


@cache
def _needs_extra(module: str) -> bool:
    """Whether importing ``module`` (one of ours) imports an optional dependency."""
    for imported, in_function in _imports(_tree(MODULES[module])):
        if in_function:
            continue
        if imported.split(".")[0] in OPTIONAL:
            return True
        if imported in MODULES and imported != module and _needs_extra(imported):
            return True
    return False


def test_every_module_belongs_to_a_layer() -> None:
    for module in MODULES:
        if module != "lightning_clr":
            _layer(module)


def test_data_flows_one_way_between_the_layers() -> None:
    broken = []
    for module, path in MODULES.items():
        if module == "lightning_clr":
            continue
        for imported, _ in _imports(_tree(path)):
            if imported.split(".")[0] != "lightning_clr":
                continue
            if imported == "lightning_clr" or _layer(imported) > _layer(module):
                broken.append(f"{module} imports {imported}")
    assert not broken, "\n".join(broken)


def test_inside_the_range_test_the_runner_calls_the_sweep_and_the_sweep_the_rest() -> None:
    prefix = "lightning_clr.range_test"
    found = {m.removeprefix(prefix).lstrip(".") or "__init__" for m in MODULES if m.startswith(prefix)}
    assert found == set(RANGE_TEST), "a range-test module was added or removed: place it in RANGE_TEST"
    for stem, allowed in RANGE_TEST.items():
        path = PACKAGE / "range_test" / f"{stem}.py"
        used = {m.rsplit(".", 1)[1] for m, _ in _imports(_tree(path)) if m.startswith(prefix + ".")}
        assert used <= allowed, f"range_test/{stem}.py imports {sorted(used - allowed)}"


def test_no_import_hides_in_a_function_except_an_optional_extras() -> None:
    hidden = []
    for module, path in MODULES.items():
        for imported, in_function in _imports(_tree(path)):
            ours = imported in MODULES and _needs_extra(imported)
            if in_function and imported.split(".")[0] not in OPTIONAL | {"doctest"} and not ours:
                hidden.append(f"{module}: import of {imported} in a function")
    assert not hidden, "\n".join(hidden)


def test_the_needs_extra_reading_sees_an_extra_behind_an_import_of_ours() -> None:
    """The exemption above is computed, so check that it can say no and yes."""
    assert _needs_extra("lightning_clr.tuning._storage")  # imports optuna
    assert _needs_extra("lightning_clr.tuning._trial")  # imports _storage
    assert not _needs_extra("lightning_clr.tuning")  # imports optuna only where used
    assert not _needs_extra("lightning_clr.schedule")


def test_no_module_over_400_lines_and_no_function_over_60_lines_of_code() -> None:
    """Docstrings are not counted in a function's length."""
    too_long = []
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module}: {text.count(chr(10))} lines")
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                length = (body[-1].end_lineno or 0) - body[0].lineno + 1 if body else 0
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines of code")
    assert not too_long, "\n".join(too_long)


def test_the_schedule_imports_neither_torch_nor_lightning() -> None:
    code = (
        "import sys, lightning_clr.schedule, lightning_clr._validation\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'lightning', 'pytorch_lightning'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out.stdout


# Modules whose tests live in a file of another name, and why.
TESTED_ELSEWHERE = {
    "lightning_clr._lightning": "tests/test_lightning_seam.py",  # the canary of the seam
    "lightning_clr.callback": "tests/callback",  # one folder: the callback's many setups
    "lightning_clr.cycle_end._checkpoint": "tests/callback/test_cycle_end.py",  # fits with the callback
    "lightning_clr.cycle_end._clock": "tests/callback/test_cycle_end.py",
    "lightning_clr.cycle_end._early_stopping": "tests/callback/test_cycle_end.py",
    "lightning_clr.engine._divergence": "tests/engine/test_guard.py",  # the guard's pure rule, with the guard
    "lightning_clr.tuning._bounds": "tests/tuning/test_trial_plan.py",  # the study's shared bounds, with the plan
    "lightning_clr.engine._skips": "tests/engine/test_tensor_lr.py",  # the skip flags, with the GPU-ready writer
    "lightning_clr.cli._app": "tests/cli/test_cli.py",  # the command, run end to end
    "lightning_clr.cli._trainer": "tests/cli/test_cli.py",  # its subcommands, run by the command
    "lightning_clr.cli._checks": "tests/cli/test_cli.py",  # the flags' checks, through the command
    "lightning_clr.cli._yaml": "tests/cli/test_cli.py",  # the YAML limits, through the command
    "lightning_clr.range_test._reading": "tests/range_test/test_rules.py",  # read through the rules
    "lightning_clr.range_test._smoothing": "tests/range_test/test_rules.py",
}


def test_every_module_has_its_tests_where_the_package_says() -> None:
    """``lightning_clr/<sub>/_<name>.py`` is tested in ``tests/<sub>/test_<name>.py``."""
    missing = []
    for module, path in MODULES.items():
        if path.stem in ("__init__", "__main__"):
            continue
        parts = module.split(".")[1:]
        expected = TESTED_ELSEWHERE.get(module, "/".join(["tests", *parts[:-1], f"test_{parts[-1].lstrip('_')}.py"]))
        if not (PACKAGE.parent / expected).exists():
            missing.append(f"{module}: {expected}")
    assert not missing, "\n".join(missing)
