"""Defaults from the config file and CF_* variables; precedence flag > environment > file > preset/built-in."""

import json
from pathlib import Path

import pytest

from cfcli.config import config_path
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

FRAMEWISE, CHUNKWISE = FIXTURES / "tiny-framewise.yaml", FIXTURES / "tiny-chunkwise.yaml"


def write_config(text: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def made(cf, tmp_path, *args) -> dict:
    """Generate a 1-frame clip with the given flags (none for what the test leaves to defaults); its metadata."""
    out = tmp_path / "clip.mkv"
    r = cf("generate", PROMPT, "--frames", 1, "--seed", 1, "--out", out, "--overwrite", "-q", *args)
    assert r.exit_code == 0, r.output
    return read_video(out).metadata


def test_config_file_is_in_the_xdg_config_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "x"))
    assert config_path() == tmp_path / "x" / "cfcli" / "config.yaml"
    monkeypatch.setenv("CF_CONFIG", str(tmp_path / "mine.yaml"))
    assert config_path() == tmp_path / "mine.yaml"


def test_flag_beats_env_beats_file_beats_preset(cf, tmp_path, monkeypatch):
    write_config(f"device: cpu\ndtype: bfloat16\ncodec: ffv1\ncrf: 30\npreset: {CHUNKWISE}\n")
    meta = made(cf, tmp_path)  # all from the file
    assert (meta["dtype"], meta["codec"], meta["preset"]) == ("bfloat16", "ffv1", "tiny-chunkwise")
    monkeypatch.setenv("CF_DTYPE", "float32")
    monkeypatch.setenv("CF_PRESET", str(FRAMEWISE))
    meta = made(cf, tmp_path)  # the environment over the file
    assert (meta["dtype"], meta["preset"], meta["device"]) == ("float32", "tiny-framewise", "cpu")
    meta = made(cf, tmp_path, "--dtype", "bfloat16", "--preset", CHUNKWISE)  # flags over both
    assert (meta["dtype"], meta["preset"]) == ("bfloat16", "tiny-chunkwise")


def test_crf_from_env_and_file(cf, tmp_path, monkeypatch):
    write_config("device: cpu\ncrf: 30\n")
    args = ["--preset", FRAMEWISE, "--codec", "h264", "--out"]
    for env, want in ((None, 30), ("24", 24)):
        if env:
            monkeypatch.setenv("CF_CRF", env)
        out = tmp_path / f"{want}.mp4"
        assert cf("generate", PROMPT, "--frames", 1, "-q", *args, out).exit_code == 0
        assert read_video(out).metadata["crf"] == want
    assert cf("generate", PROMPT, "--frames", 1, "-q", "--crf", 12, *args, tmp_path / "f.mp4").exit_code == 0
    assert read_video(tmp_path / "f.mp4").metadata["crf"] == 12


def test_mode_flag_beats_a_configured_preset(cf, tmp_path):
    write_config("preset: chunkwise\n")
    r = cf("download", "--mode", "framewise", "--steps", 2, "--dry-run")  # no clash with the file's preset
    assert r.exit_code == 0 and "framewise-2step" in r.output and "chunkwise" not in r.output
    r = cf("download", "--dry-run")
    assert r.exit_code == 0 and "chunkwise" in r.output


def test_output_dir_from_config(cf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(f"output_dir: {tmp_path / 'videos'}\ncodec: ffv1\n")
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--device", "cpu", "--frames", 5, "--seed", 4, "--json", "-q")
    assert r.exit_code == 0, r.output
    want = tmp_path / "videos" / "a-fox-running-through-a-snowy-forest-at-dawn-4.mkv"
    assert json.loads(r.stdout)["path"] == str(want)
    monkeypatch.setenv("CF_OUTPUT_DIR", str(tmp_path / "env"))
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--device", "cpu", "--frames", 5, "--seed", 4, "--json", "-q")
    assert json.loads(r.stdout)["path"].startswith(str(tmp_path / "env"))


@pytest.mark.parametrize("text, message", [
    ("devise: cpu\n", "unknown keys in"),
    ("crf: high\n", "crf must be a whole number from 0 to 51, got 'high'"),
    ("- cpu\n", "is not a mapping"),
    ("codec: [\n", "cannot read the config file"),
])
def test_bad_config_is_one_clear_message(cf, text, message):
    write_config(text)
    r = cf("generate", PROMPT, "--preset", FRAMEWISE)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def write_bytes(data: bytes) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "is not a text file"),
    (b"crf: 20\x00\n", "is not a text file"),
    (b"crf: [20\n", "is not valid YAML (line 2)"),
    (b"crf: 99\n", "crf must be a whole number from 0 to 51, got 99"),
    (b"dtype: float64\n", "dtype must be float32, bfloat16 or float16"),
])
def test_help_info_and_cache_work_whatever_the_config_file(cf, tmp_path, data, message):
    """A config file that is binary, not YAML or holds a bad value never blocks --help, `cf info` or `cf cache`; the
    command that would use it refuses with the file's name and what is wrong, never a traceback."""
    path = write_bytes(data)
    for args in (["--help"], ["generate", "--help"], ["extend", "-h"], ["info", "--help"], ["cache"]):
        r = cf(*args)
        assert r.exit_code == 0, (args, r.output)
    clip = tmp_path / "clip.mkv"
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--device", "cpu", "--dtype", "float32", "--codec", "ffv1",
           "--crf", 18, "--frames", 1, "--out", clip, "-q")  # every flag given: nothing of the file is used
    assert r.exit_code == 0, r.output
    assert cf("info", clip).exit_code == 0
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--frames", 1, "--out", tmp_path / "b.mkv")
    assert r.exit_code == 1 and message in r.output and str(path) in r.output
    assert "Traceback" not in r.output and r.output.count("error:") == 1


def test_a_bad_value_is_refused_only_where_it_is_used(cf, tmp_path, monkeypatch):
    path = write_config("crf: loud\npreset: 5\n")
    r = cf("download", "--mode", "framewise", "--dry-run")  # neither crf nor the preset is used
    assert r.exit_code == 0, r.output
    r = cf("download", "--dry-run")  # the preset is
    assert r.exit_code == 1 and f"the config file {path}: preset must be a preset name" in r.output
    monkeypatch.setenv("CF_CRF", "20")  # the environment wins over the file's crf: it is not used
    out = tmp_path / "c.mp4"
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--device", "cpu", "--frames", 1, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    monkeypatch.delenv("CF_CRF")
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--device", "cpu", "--frames", 1, "--out", out, "--overwrite")
    assert r.exit_code == 1 and "crf must be a whole number from 0 to 51, got 'loud'" in r.output


def test_cf_live_takes_its_defaults_from_the_config_file_too(cf):
    write_config("device: gpu0\n")  # reaches `cf live` only if the file's keys are its defaults: refused, nothing loaded
    r = cf("live", "--preset", FRAMEWISE, "--random-weights", "--measure-latency", 1, "--json")
    assert r.exit_code == 1 and "unknown device 'gpu0'" in r.output


def test_cf_live_records_under_the_configured_output_folder(cf, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("cfcli.cli.live.load", lambda *a, **k: (None, None))
    monkeypatch.setattr("cfcli.cli.live.run_server", lambda engine, encoder, config, *a: seen.update(dir=config.out_dir))
    monkeypatch.setenv("CF_OUTPUT_DIR", str(tmp_path / "videos"))
    assert cf("live", "--preset", FRAMEWISE).exit_code == 0
    assert seen["dir"] == tmp_path / "videos" / "live"
    assert cf("live", "--preset", FRAMEWISE, "--out-dir", tmp_path / "rec").exit_code == 0
    assert seen["dir"] == tmp_path / "rec"


def test_a_job_reads_its_clients_settings_not_this_process(tmp_path, monkeypatch):
    """`cf serve` runs a job with the client's settings: its CF_* variables and its config file."""
    from cfcli.config import client_environment, environment, output_dir, read_config, setting

    monkeypatch.setenv("CF_CODEC", "h265")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CF_OUTPUT_DIR", "clips")
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text("crf: 30\n")
    monkeypatch.setenv("CF_CONFIG", str(theirs))
    sent = client_environment()
    assert sent["CF_OUTPUT_DIR"] == str(tmp_path / "clips") and sent["CF_CODEC"] == "h265"
    monkeypatch.delenv("CF_CODEC")
    monkeypatch.delenv("CF_CONFIG")
    with environment(sent):
        assert setting("codec", read_config()) == "h265" and setting("crf", read_config()) == "30"
        assert output_dir() == tmp_path / "clips"
    assert setting("codec", read_config()) is None and setting("crf", read_config()) is None
