"""Shared test helpers: fixture paths, the official cases, and the CLI run in-process with an isolated home."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"
PROMPT = "a fox running through a snowy forest at dawn"


def cases() -> list[dict]:
    return json.loads((FIXTURES / "cases.json").read_text())["cases"]


@pytest.fixture(scope="session")
def golden() -> dict:
    return load_file(str(FIXTURES / "cases.safetensors"))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own cfcli cache and an empty Hugging Face cache: nothing leaks between tests."""
    monkeypatch.setenv("CF_HOME", str(tmp_path / "cf-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user config file, no CF_* defaults
    for name in ("CF_CONFIG", "CF_DEVICE", "CF_DTYPE", "CF_CODEC", "CF_CRF", "CF_PRESET", "CF_OUTPUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


@pytest.fixture
def cf():
    """Run `cf ARGS...` in-process; returns the click Result (exit_code, stdout, stderr)."""
    from cfcli.cli import app

    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def chunkwise_ema(tmp_path):
    """tiny-chunkwise on its EMA weights, as a preset file: its non-EMA generator has a zero-initialised head, so it
    ignores the text, and prompt switches on it would prove nothing."""
    import yaml

    data = yaml.safe_load((FIXTURES / "tiny-chunkwise.yaml").read_text())
    for ref in data["weights"].values():
        ref["path"] = str((FIXTURES / ref["path"]).resolve())
    data["use_ema"] = True
    path = tmp_path / "tiny-chunkwise-ema.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def info(cf, path) -> dict:
    """`cf info PATH --json`, read."""
    r = cf("info", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def remake(cf, command: str, out):
    """Run a `cf info` remake command into `out`; the frames it made."""
    import shlex

    from cfcli.pipeline.video import read_video

    argv = shlex.split(command)
    assert argv[0] == "cf"
    r = cf(*argv[1:], "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return read_video(out).frames


def stream_in_chunks(model, latents, chunks):
    """Decode latents [B, F, ...] through `model.stream_decoder()` in chunks of the given sizes; each chunk must give
    1 + 4(n-1) frames the first time and 4n after. Returns the frames joined along time."""
    import torch

    stream = model.stream_decoder()
    parts, start = [], 0
    for i, n in enumerate(chunks):
        part = stream.decode(latents[:, start:start + n])
        assert part.shape[1] == (1 + 4 * (n - 1) if i == 0 else 4 * n)
        parts.append(part)
        start += n
    return torch.cat(parts, dim=1)


def fixture_engine(preset: str, device: str = "cpu"):
    """The engine of a tiny fixture preset (`tests/fixtures`), in float32."""
    import torch

    from cfcli.pipeline.engine import Engine
    from cfcli.presets import load_preset

    return Engine.load(load_preset(FIXTURES / preset), device, torch.float32)


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def contract(preset: str, prompt: str, seed: int, frames: int, latents: Path, out: Path, *extra) -> list:
    """The engine issue's contract flags for `cf generate`."""
    return ["generate", prompt, "--preset", FIXTURES / preset, "--seed", seed, "--frames", frames, "--device", "cpu",
            "--dtype", "float32", "--save-latents", latents, "--out", out, "--codec", "ffv1", *extra]
