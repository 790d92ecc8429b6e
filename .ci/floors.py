"""Print pyproject.toml's dependencies (and the test extra) pinned `==` their declared floors, for `.ci/run`."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", spec.strip())
    if not m:
        sys.exit(f"{spec!r} has no plain >= floor to test")
    name, floor = m.groups()
    print(f"{name}=={floor}")
