"""Import direction: no module imports a layer above it, and no two top-level units import each other.

Layers, highest first. A module may import its own layer or any layer below it, never one above. Imports inside
functions count too: a lazy import still ties the layers together.

- entry:    `cfcli/__main__.py` (runs the CLI) and the package `__init__.py`, the Python API's façade (it re-exports
            `cfcli.session` lazily; its version lives in `version.py`).
- cli:      `cfcli/cli/` parses arguments and renders; may use everything below.
- serve:    `cfcli/serve/`, the resident server (`cf serve`: jobs and the live page on one engine) and its client.
- live:     `cfcli/live/`, the live front end's server and session; drives the pipeline through the session.
- jobs:     `cfcli/jobs/`, what `cf generate` and `cf extend` do on a session, reporting through a view: run by the
            CLI and by `cf serve` alike.
- session:  `cfcli/session.py`, the front door: resolves options, plans memory, holds the loaded engine, runs jobs.
- pipeline: `cfcli/pipeline/` plans and owns the loop.
- store:    top-level modules that find, fetch, convert or describe weights and presets. They sit above models
            because they read the model configs or checkpoint layout: `presets.py` builds model configs,
            the `hub/` package resolves a preset's files, `convert.py` uses `models.checkpoint`,
            `taehv_weights.py` loads `models.taehv`, `manifest.py` and `converted_check.py` serve them.
- models:   `cfcli/models/`, plain nn.Modules; `cfcli/lora/`, LoRA files read, checked against the DiT's config and
            merged into its weights (torch and safetensors only).
- ops:      `cfcli/ops/`, kernels and functional pieces.
- base:     modules that import nothing of cfcli above them, usable from any layer: `errors.py`, `paths.py`,
            `preset_schema.py`, `resume.py`, `config.py` and `version.py`.

A new top-level module must be placed in `UNITS` below; the test fails until it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "cfcli"

LAYERS = ["entry", "cli", "serve", "live", "jobs", "session", "pipeline", "store", "models", "ops", "base"]

# Top-level unit of cfcli (its second dotted name) -> layer.
UNITS = {
    "__main__": "entry",
    "cli": "cli",
    "serve": "serve",
    "live": "live",
    "jobs": "jobs",
    "session": "session",
    "pipeline": "pipeline",
    "presets": "store",
    "hub": "store",
    "convert": "store",
    "converted_check": "store",
    "manifest": "store",
    "taehv_weights": "store",
    "models": "models",
    "lora": "models",
    "ops": "ops",
    "errors": "base",
    "paths": "base",
    "preset_schema": "base",
    "resume": "base",
    "config": "base",
    "version": "base",
    "": "entry",  # `cfcli` itself (its __init__: the Python API)
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted module) of every cfcli import in `source`, at any depth, relative ones resolved; `from a import
    b` gives `a.b` when `b` is a module, else `a`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, _submodule(base, alias.name)) for alias in node.names]
    return [(line, name) for line, name in found if name == "cfcli" or name.startswith("cfcli.")]


def _submodule(base: str, name: str) -> str:
    candidate = ROOT.parent.joinpath(*f"{base}.{name}".split("."))
    return f"{base}.{name}" if candidate.with_suffix(".py").exists() or candidate.is_dir() else base


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str, where: str) -> int:
    name = unit(module)
    assert name in UNITS, f"{where}: cfcli.{name} has no layer; add it to UNITS in tests/test_layers.py"
    return LAYERS.index(UNITS[name])


def sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importer, imported) for every cfcli import."""
    return [(str(path.relative_to(ROOT.parent)), line, module_name(path), target)
            for path in sources() for line, target in imported(path)]


def test_every_module_is_placed_in_a_layer():
    for path in sources():
        layer(module_name(path), str(path.relative_to(ROOT.parent)))


def test_no_module_imports_a_layer_above_it():
    upward = [f"{file}:{line}: {importer} ({UNITS[unit(importer)]}) imports {target} ({UNITS[unit(target)]})"
              for file, line, importer, target in edges()
              if layer(target, f"{file}:{line}") < layer(importer, file)]
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_top_level_units():
    graph: dict[str, set[str]] = {}
    for _, _, importer, target in edges():
        if unit(importer) != unit(target):
            graph.setdefault(unit(importer), set()).add(unit(target))
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between cfcli units: " + " -> ".join(cycle or [])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, trail + [node])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}}, None),
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
])
def test_cycle_finder(graph, expected):
    assert _cycle(graph) == expected


def test_imports_are_found_at_any_depth_and_resolved():
    source = "import os\nfrom cfcli import errors\ndef f():\n    from ..models import dit\n    from . import common\n"
    assert imports_in(source, "cfcli.pipeline.engine", False) == [
        (2, "cfcli.errors"), (4, "cfcli.models.dit"), (5, "cfcli.pipeline")]
    assert imports_in("from .dit import X\n", "cfcli.models", True) == [(1, "cfcli.models.dit")]


COMMANDS = {"bench", "cache", "download", "extend", "generate", "info", "live", "serve"}  # cfcli/cli/<command>.py


def test_no_command_imports_another_command():
    """What two commands share lives in its own module of cfcli/cli (common, checks, files, progress, view, jobs,
    live_options)."""
    crossed = [f"{file}:{line}: {importer} imports {target}" for file, line, importer, target in edges()
               if importer.startswith("cfcli.cli.") and target.startswith("cfcli.cli.")
               and {importer.split(".")[2], target.split(".")[2]} <= COMMANDS and importer != target]
    assert not crossed, "commands importing each other:\n" + "\n".join(crossed)


def test_the_command_list_matches_the_cli():
    assert {t.split(".")[2] for _, t in imports_in((ROOT / "cli" / "__init__.py").read_text(), "cfcli.cli", True)
            if t.count(".") == 2} - {"common"} == COMMANDS


def test_front_ends_reach_the_pipeline_through_the_session():
    """The CLI commands that run models and the live front end build no engine and place no model themselves: they
    open a `cfcli.session.Session` (a front end that imports a model class or decides a placement is a door in the
    wrong place)."""
    banned = ("cfcli.pipeline.memory", "cfcli.pipeline.random_weights", "cfcli.pipeline.text", "cfcli.models")
    front = [f"{file}:{line}: {importer} imports {target}" for file, line, importer, target in edges()
             if unit(importer) in ("cli", "serve", "live", "jobs") and target.startswith(banned) and target != "cfcli.models.geometry"]
    assert not front, "front ends reaching past the session:\n" + "\n".join(front)
