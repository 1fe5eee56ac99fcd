"""Sphinx configuration: the prose docs (Markdown, through MyST) and an API reference generated from ``__all__``.

``make docs`` builds it with ``-W --keep-going -n``: every warning, and every reference that does not resolve,
fails the build. The reference pages under ``api/`` are written here at start-up, from ``lightning_clr.__all__``
and from the ``__all__`` of each public (no leading underscore) submodule or subpackage, so that a new public
name appears in the reference without editing the docs. In the prose docs, inline code that names a public
object (``CyclicLearningRate``, ``tune_cycle_length()``, ``lightning_clr.RangeTestConfig``) links to its entry.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import lightning_clr  # noqa: E402

project = "lightning_clr"
release = version = lightning_clr.__version__
copyright = "the lightning_clr authors, Apache-2.0"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/benchmarks/*.md are the generated tables that benchmarks.md already contains, section by section.
exclude_patterns = ["_build", "benchmarks/*.md"]
html_theme = "alabaster"
html_static_path: list[str] = []
myst_heading_anchors = 3
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # Lightning's own hook docstrings are Lightning's to document
autodoc_default_options = {"members": True, "show-inheritance": False}
# Names of other projects cannot be resolved offline (no intersphinx download at build time); our own can.
nitpick_ignore_regex = [
    ("py:.*", r"(torch|lightning|pytorch_lightning|lightning_fabric|optuna|matplotlib|numpy|jsonargparse|"
              r"torchmetrics|pl|np|nn|optim|typing|collections|pathlib|os|argparse)(\..*)?"),
    ("py:.*", r"(Figure|Axes|Trainer|LightningModule|LightningDataModule|Callback|Optimizer|Tensor|Metric|"
              r"Study|Trial|ArgumentParser|LightningCLI|LightningArgumentParser|Namespace|Path|ModuleType|"
              r"Callable|Iterable|Sequence|Mapping|Literal|Union|Optional|Any|NoneType|ModelSource)"),
    # Private modules are not in the reference by design; a docstring naming one renders as code, unlinked.
    ("py:.*", r"lightning_clr(\.[a-z_]+)*\._[a-z_]+(\..*)?"),
]

API_DIR = DOCS / "api"
API_TARGETS: dict[str, str] = {}  # short name (and module.name) -> fully qualified name of its API entry


def _directive(obj: Any) -> str:
    if inspect.isclass(obj):
        return "autoclass"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "autofunction"
    return "autodata"


def _public_modules() -> list[str]:
    """Every module and subpackage below ``lightning_clr`` with no ``_``-prefixed part in its dotted name,
    parents before their children."""
    names = [info.name for info in pkgutil.walk_packages(lightning_clr.__path__, "lightning_clr.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def _page(title: str, module: str, names: list[str], intro: str) -> str:
    lines = [title, "=" * len(title), "", intro, "", f".. currentmodule:: {module}", ""]
    for name in names:
        obj = getattr(importlib.import_module(module), name)
        lines += [f".. {_directive(obj)}:: {name}", ""]
        API_TARGETS.setdefault(name, f"{module}.{name}")
        API_TARGETS[f"{module}.{name}"] = f"{module}.{name}"
    return "\n".join(lines) + "\n"


def write_api_pages() -> None:
    """``api/index.rst``: the root package's ``__all__``; ``api/<module>.rst``: the names of a public module's
    ``__all__`` that neither the root nor a parent module documents (each object once, at its shortest path)."""
    API_DIR.mkdir(exist_ok=True)
    root_names = [n for n in lightning_clr.__all__ if not n.startswith("_")]
    documented = {id(getattr(lightning_clr, n)) for n in root_names}
    pages = {}
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        extra = [n for n in getattr(module, "__all__", []) if id(getattr(module, n)) not in documented]
        documented |= {id(getattr(module, n)) for n in extra}
        if extra:
            pages[module_name] = _page(
                f"``{module_name}``", module_name, extra,
                f"Further public names of ``{module_name}`` (``from {module_name} import ...``).",
            )
    index = _page("API reference", "lightning_clr", root_names,
                  "Everything ``from lightning_clr import ...`` offers (its ``__all__``).")
    for name in lightning_clr.__all__:  # the root's names link to the root entry, not a submodule's
        API_TARGETS[name] = f"lightning_clr.{name}"
    index += "\n.. toctree::\n   :maxdepth: 1\n   :caption: Modules\n\n" + "".join(
        f"   {name}\n" for name in pages)
    written = {"index.rst": index, **{f"{name}.rst": text for name, text in pages.items()}}
    for stale in API_DIR.glob("*.rst"):
        if stale.name not in written:
            stale.unlink()
    for filename, text in written.items():
        path = API_DIR / filename
        if not path.exists() or path.read_text() != text:  # unchanged pages keep their mtime: no rebuild
            path.write_text(text)


def link_api_names(app: Any, doctree: nodes.document) -> None:
    """Inline code in the prose docs that names a public object becomes a link to its API entry."""
    if app.env.docname.startswith("api/"):
        return
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, (nodes.reference, addnodes.pending_xref)):
            continue
        key = literal.astext().strip()
        key = key[:-2] if key.endswith("()") else key
        target = API_TARGETS.get(key) or API_TARGETS.get(key.removeprefix("lightning_clr."))
        if target is None:
            continue
        xref = addnodes.pending_xref("", refdomain="py", reftype="obj", reftarget=target, refexplicit=True,
                                     refwarn=True)
        literal.replace_self(xref)
        xref += literal


def resolve_short_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """A docstring's short reference (``:func:`interpolate```, ``:meth:`CyclicSchedule.point```) resolved
    against the reference's own entries, also when its object is documented at the root rather than in the
    module whose names the docstring uses. Anything still unknown stays a warning."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].removeprefix("lightning_clr.")
    full = API_TARGETS.get(target)
    if full is None and "." in target:
        head, rest = target.split(".", 1)
        full = f"{API_TARGETS[head]}.{rest}" if head in API_TARGETS else None
    if full is None or full == node["reftarget"]:
        return None
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"], full, node, contnode)


write_api_pages()


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-read", link_api_names)
    app.connect("missing-reference", resolve_short_names)
    return {"parallel_read_safe": True}
