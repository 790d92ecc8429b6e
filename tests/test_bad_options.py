"""Bad options and outputs through the real CLI: exit status 1, one `error:` message, no traceback, nothing changed on
disk, and all refused before any model loads."""

import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, PROMPT

TINY = FIXTURES / "tiny-framewise.yaml"
BASE = ["--preset", TINY, "--device", "cpu", "--dtype", "float32"]

# (id, command line after `cf`); the names refer to files of the work folder made below, the current directory.
GENERATE = [
    ("seconds-nan", ["--seconds", "nan"]),
    ("seconds-inf", ["--seconds", "inf"]),
    ("seconds-0", ["--seconds", "0"]),
    ("seconds-negative", ["--seconds", "-1"]),
    ("seconds-too-long", ["--seconds", "1e300"]),
    ("frames-0", ["--frames", "0"]),
    ("frames-past-the-position-table", ["--frames", str(10**9)]),
    ("seed-2**64", ["--seed", str(2**64)]),
    ("seed-negative", ["--seed", "-1"]),
    ("fps-negative", ["--fps", "-3"]),
    ("fps-0", ["--fps", "0"]),
    ("fps-2**31", ["--fps", str(2**31)]),
    ("crf-99", ["--crf", "99"]),
    ("crf-negative", ["--crf", "-1"]),
    ("prompt-at-400-digits", ["--prompt-at", "1" * 400, "the fox jumps"]),
    ("prompt-schedule-binary", ["--prompt-schedule", "binary.txt"]),
    ("out-exists", ["--out", "old.mp4"]),
    ("out-is-a-folder", ["--out", "folder", "--overwrite"]),
    ("out-parent-is-a-file", ["--out", "old.mp4/v.mp4"]),
    ("out-unknown-extension", ["--out", "v.xyz"]),
    ("out-under-proc", ["--out", "/proc/v.mp4"]),
    ("out-in-new-folders-unknown-extension", ["--out", "new/deeper/v.xyz"]),
    ("latents-are-the-video", ["--out", "v.mp4", "--save-latents", "v.mp4"]),
    ("latents-exist", ["--save-latents", "old.st"]),
    ("latents-over-an-existing-video", ["--out", "old.mp4", "--save-latents", "./old.mp4", "--overwrite"]),
    ("usage-not-a-number", ["--frames", "abc"]),
    ("usage-unknown-option", ["--nope"]),
]
OTHERS = [
    ("prompt-file-binary", ["generate", *BASE, "--prompt-file", "binary.txt"]),
    ("prompt-file-nul", ["generate", *BASE, "--prompt-file", "nul.txt"]),
    ("extend-frames-0", ["extend", "clip.mkv", *BASE, "--frames", "0"]),
    ("extend-frames-past-the-position-table", ["extend", "clip.mkv", *BASE, "--frames", str(10**9)]),
    ("extend-seconds-nan", ["extend", "clip.mkv", *BASE, "--seconds", "nan"]),
    ("extend-seed-negative", ["extend", "clip.mkv", *BASE, "--seed", "-5"]),
    ("extend-fps-0", ["extend", "clip.mkv", *BASE, "--fps", "0"]),
    ("extend-crf-99", ["extend", "clip.mkv", *BASE, "--crf", "99"]),
    ("extend-out-exists", ["extend", "clip.mkv", *BASE, "--out", "clip.mkv"]),
    ("extend-latents-over-the-clip", ["extend", "clip.mkv", *BASE, "--save-latents", "clip.mkv", "--overwrite"]),
    ("extend-missing-argument", ["extend"]),
    ("bench-frames-0", ["bench", *BASE, "--frames", "0"]),
    ("bench-peak-nan", ["bench", *BASE, "--peak-tflops", "nan"]),
    ("no-such-command", ["nope"]),
]
CASES = [(name, ["generate", *BASE, PROMPT, "--seed", "1", *args]) for name, args in GENERATE] + OTHERS


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder holding what a user has: an old video, old latents, a clip, a folder, a binary file."""
    work = tmp_path / "work"
    (work / "folder").mkdir(parents=True)
    (work / "old.mp4").write_bytes(b"an old video")
    (work / "old.st").write_bytes(b"old latents")
    (work / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (work / "nul.txt").write_bytes(b"a fox\0in the snow\n")
    shutil.copy(FIXTURES / "framewise_4step_extend.mkv", work / "clip.mkv")
    monkeypatch.chdir(work)
    return work


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_models(monkeypatch):
    """Loading a model fails the test: every case must be refused before."""
    from cfcli.pipeline.engine import Engine
    from cfcli.pipeline.text import PromptEncoder

    def loaded(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Engine, "load", loaded)
    monkeypatch.setattr(PromptEncoder, "encode", loaded)


@pytest.mark.parametrize("args", [args for _, args in CASES], ids=[name for name, _ in CASES])
def test_refused_with_one_message_and_nothing_changed(cf, work, no_models, args):
    before = snapshot(work)
    r = cf(*args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert [line for line in r.output.splitlines() if line.startswith("error:")] == \
        [r.output.splitlines()[0]], r.output  # one message, first
    assert snapshot(work) == before


def test_messages_name_the_value_and_the_range(cf, work, no_models):
    r = cf("generate", *BASE, PROMPT, "--frames", 10**9)
    assert "--frames 1000000000" in r.output and "the maximum is 4089 frames" in r.output
    assert "0 to 9223372036854775807" in cf("generate", *BASE, PROMPT, "--seed", 2**64).output
    assert "use 1 to 240" in cf("generate", *BASE, PROMPT, "--fps", 0).output
    assert "use 0 (best) to 51" in cf("generate", *BASE, PROMPT, "--crf", 99).output
    r = cf("generate", *BASE, PROMPT, "--frames", "abc")
    assert "Invalid value for '--frames'" in r.output and "generate --help" in r.output


def test_ffv1_says_it_ignores_crf_only_when_given(cf, work):
    r = cf("generate", *BASE, PROMPT, "--frames", 5, "--codec", "ffv1", "--crf", 30, "--out", "a.mkv")
    assert r.exit_code == 0 and "ffv1 is lossless and ignores --crf" in r.output
    r = cf("generate", *BASE, PROMPT, "--frames", 5, "--codec", "ffv1", "--out", "b.mkv")
    assert r.exit_code == 0 and "ignores --crf" not in r.output


def test_plain_refuses_levers_asked_for_by_name(cf):
    r = cf("generate", "a fox", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--plain",
           "--decoder", "taehv")
    assert r.exit_code == 1 and "--plain runs the reference modules" in r.output
    r = cf("bench", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--plain", "--quantize", "fp8")
    assert r.exit_code == 1 and "--plain runs the reference modules" in r.output
