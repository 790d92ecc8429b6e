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
    ("frames-and-seconds", ["--frames", "5", "--seconds", "1"]),
    ("poster-is-the-latents", ["--out", "o.mp4", "--save-latents", "o.jpg", "--poster"]),
    ("posters-are-the-numbered-latents", ["--out", "o.mp4", "--save-latents", "o.jpg", "--poster", "--count", "2"]),
    ("open-without-a-display", ["--open"]),
    ("device-mps", ["--device", "mps"]),
    ("device-xpu", ["--device", "xpu"]),
    ("usage-not-a-number", ["--frames", "abc"]),
    ("usage-unknown-option", ["--nope"]),
]
OTHERS = [
    ("prompt-file-binary", ["generate", *BASE, "--prompt-file", "binary.txt"]),
    ("prompt-file-nul", ["generate", *BASE, "--prompt-file", "nul.txt"]),
    ("prompt-and-prompt-file", ["generate", *BASE, PROMPT, "--prompt-file", "prompts.txt"]),
    ("extend-frames-and-seconds", ["extend", "clip.mkv", *BASE, "--prompt", "a fox", "--frames", "4",
                                   "--seconds", "1"]),
    ("extend-poster-is-the-latents", ["extend", "clip.mkv", *BASE, "--prompt", "a fox", "--out", "e.mp4",
                                      "--save-latents", "e.jpg", "--poster"]),
    ("extend-open-without-a-display", ["extend", "clip.mkv", *BASE, "--prompt", "a fox", "--open"]),
    ("extend-device-mps", ["extend", "clip.mkv", *BASE, "--prompt", "a fox", "--device", "mps"]),
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
    ("bench-device-mps", ["bench", *BASE, "--device", "mps"]),
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
    (work / "prompts.txt").write_text("a fox\na hare\n")
    shutil.copy(FIXTURES / "framewise_4step_extend.mkv", work / "clip.mkv")
    monkeypatch.chdir(work)
    monkeypatch.delenv("DISPLAY", raising=False)  # a headless machine: --open has nothing to play on
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
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


def test_conflicts_say_what_to_do(cf, work, no_models):
    r = cf("generate", *BASE, PROMPT, "--frames", 5, "--seconds", 1)
    assert "--frames and --seconds both set the length" in r.output and "give one of them" in r.output
    r = cf("generate", *BASE, PROMPT, "--prompt-file", "prompts.txt")
    assert "a prompt and --prompt-file prompts.txt were both given" in r.output
    r = cf("generate", *BASE, PROMPT, "--out", "o.mp4", "--save-latents", "o.jpg", "--poster")
    assert "--poster would write o.jpg, which is --save-latents o.jpg" in r.output
    r = cf("generate", *BASE, PROMPT, "--open")
    assert "--open needs a display" in r.output and "leave out --open" in r.output
    r = cf("generate", *BASE, PROMPT, "--device", "mps")
    assert "--device mps is not supported" in r.output and "--device cpu" in r.output


def test_open_without_xdg_open_is_refused_up_front(cf, work, no_models, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("PATH", str(work / "folder"))  # no xdg-open anywhere
    r = cf("generate", *BASE, PROMPT, "--open")
    assert r.exit_code == 1 and "--open needs xdg-open" in r.output


def test_gif_says_it_ignores_crf_only_when_given(cf, work):
    r = cf("generate", *BASE, PROMPT, "--frames", 5, "--crf", 30, "--out", "a.gif")
    assert r.exit_code == 0 and "gif has no quality setting" in r.output and "ignores --crf" in r.output
    r = cf("generate", *BASE, PROMPT, "--frames", 5, "--out", "b.gif")
    assert r.exit_code == 0 and "ignores --crf" not in r.output


def test_a_cpu_bench_too_big_for_memory_is_refused_before_building(cf, monkeypatch):
    from cfcli.pipeline import bench, memory

    def built(*a, **k):
        raise AssertionError("weights were built")

    monkeypatch.setattr(bench, "run", built)
    monkeypatch.setattr(memory, "available_ram", lambda: 4 * 2**30)
    r = cf("bench", "--mode", "framewise", "--device", "cpu", "--random-weights", "--json")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "needs about 23.6 GiB of memory; 4.0 GiB is available" in r.output
    assert "--dtype bfloat16 --height 240 --width 416 --frames 5 need about 11 GiB" in r.output
    help_text = cf("bench", "--help").output
    assert "cf bench --device cpu --dtype bfloat16 --height 240 --width 416 --frames 5" in help_text  # a small one


def test_a_large_count_plans_in_linear_time(work):
    """Every output path is looked up in a set: 20,000 videos plan in well under a second here (quadratic: minutes);
    names that slug alike still get -2, -3, …"""
    import time

    from cfcli.jobs.generate import plan_runs

    start = time.perf_counter()
    runs = plan_runs(["a fox"], 1, 20_000, Path("o.mp4"), ".mp4", Path("o.safetensors"))
    assert [r[2].name for r in (runs[0], runs[1], runs[-1])] == ["o-000.mp4", "o-001.mp4", "o-19999.mp4"]
    assert runs[-1][3].name == "o-19999.safetensors" and runs[-1][1] == 20_000
    same = plan_runs(["a fox"] * 5_000, 1, 1, None, ".mp4", None)  # one name for all: -2 … -5000
    assert time.perf_counter() - start < 15
    names = [r[2].name for r in same]
    assert names[:3] == ["a-fox-1.mp4", "a-fox-1-2.mp4", "a-fox-1-3.mp4"] and names[-1] == "a-fox-1-5000.mp4"
    assert len({r[2] for r in runs}) == 20_000 and len(set(names)) == 5_000
