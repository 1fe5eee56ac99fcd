"""Print, one per line, `name==floor` pins for the dependencies whose lowest declared versions CI tests.

The floors are read from pyproject.toml (`name>=X` in the dependencies or in any extra), so raising a floor
there raises it in the floors job too. The standalone `pytorch-lightning` is pinned to the `lightning` floor:
the floors job also runs the tests that use `import pytorch_lightning as pl`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib  # Python >= 3.11, as on CI

TESTED = ("lightning", "optuna", "torchmetrics", "jsonargparse")


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins: dict[str, str] = {}
    for req in requirements:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*([^;]*)", req)
        name, extras, spec = match.group(1).lower(), match.group(2) or "", match.group(3)
        low = re.search(r">=\s*([0-9][^,\s]*)", spec)
        if name in TESTED and low:
            pins[name] = f"{name}{extras}=={low.group(1)}"
    missing = [name for name in TESTED if name not in pins]
    if missing:
        sys.exit(f"floors.py: no `>=` floor declared in pyproject.toml for {', '.join(missing)}")
    pins["pytorch-lightning"] = "pytorch-lightning==" + pins["lightning"].split("==")[1]
    return list(pins.values())


if __name__ == "__main__":
    print("\n".join(floors(Path(__file__).resolve().parents[1] / "pyproject.toml")))
