"""The README's usage blocks match the CLI: every option it shows exists in that command's --help."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfcli.cli import app

README = (Path(__file__).parent.parent / "README.md").read_text()


def usage(command: str) -> str:
    m = re.search(rf"^cf {command} .*?(?=^```)", README, re.S | re.M)
    assert m, f"README has no usage block for cf {command}"
    return re.sub(r"#.*", "", m.group(0))  # comments may name other commands


@pytest.mark.parametrize("command", ["generate", "extend", "live", "download", "bench"])
def test_readme_options_exist(command):
    shown = set(re.findall(r"--[a-z][a-z0-9-]*", usage(command))) - {"--mode/--steps/--preset"}
    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    missing = sorted(o for o in shown if o not in help_text)
    assert not missing, f"README shows options cf {command} does not have: {missing}"


def test_readme_commands_use_shipped_modes():
    from cfcli.presets import shipped_presets

    for mode in re.findall(r"--mode (\w+)", README):
        assert mode in shipped_presets()
