"""What people expect of any CLI: --version, -h, completion, examples and help readable at 80 columns; and the
feedback while `cf generate`/`cf extend` run (loading lines, plain progress without a TTY, CPU notice, rates of
generated frames only), --count, --height/--width, --poster, --open, and `cf bench` on the CPU."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from cfcli import __version__
from cfcli.cli import app
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

TINY = FIXTURES / "tiny-framewise.yaml"
BASE = ["--preset", TINY, "--device", "cpu", "--dtype", "float32"]
COMMANDS = [["generate"], ["extend"], ["info"], ["bench"], ["download"], ["models"], ["cache"], ["cache", "clear"]]
README = (Path(__file__).parent.parent / "README.md").read_text()


def flat(text: str) -> str:
    return " ".join(text.split())


def help_text(args: list[str], columns: int) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    return r.output


def gen(cf, *args):
    return cf("generate", *BASE, *args)


def test_version(cf):
    for flag in ("--version", "-V"):
        r = cf(flag)
        assert r.exit_code == 0 and r.stdout.strip() == f"cf (cfcli) {__version__}"


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_dash_h_and_examples_on_every_command(cf, args):
    r = cf(*args, "-h")
    assert r.exit_code == 0 and r.output.startswith("Usage:")
    if args != ["models"]:
        examples = r.output.split("Examples:")[1].split("Arguments:")[0].split("Options:")[0]
        lines = [ln.strip() for ln in examples.strip().splitlines()]
        assert lines and all(ln.startswith(f"cf {args[0]}") for ln in lines), lines


def test_completion_is_offered_and_commands_listed_whole(cf):
    out = cf("--help").output
    assert "--install-completion" in out and "--show-completion" in out
    listed = help_text([], 80).split("Commands:")[1].strip().splitlines()
    assert [ln.split()[0] for ln in listed] == ["generate", "extend", "live", "serve", "info", "bench", "download",
                                                "models", "cache"]
    assert not any(ln.endswith("...") for ln in listed)


def option_records(args: list[str]) -> list[str]:
    """Each option's help line as click renders it (help text and its [default: ...] / [env var: ...] tail)."""
    command = typer.main.get_command(app)
    for name in args:
        command = command.commands[name]
    ctx = click.Context(command, info_name=args[-1])
    return [rec[1] for p in command.params if (rec := p.get_help_record(ctx)) and rec[1]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help_at_80_columns_is_whole(args):
    """Nothing cut or squeezed at 80 columns: every line fits, no `<bool>` on flags, and every option's help
    (its default included) reads whole once the line breaks are joined (no word split at a hyphen either)."""
    text = help_text(args, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "<bool>" not in text and "…" not in text
    records = option_records(args)
    assert records
    for record in records:
        assert flat(record) in flat(text), record
    assert any("[default:" in r for r in records) or args[0] in ("info", "models", "cache", "download")


def test_help_agrees_with_readme_and_lists_every_mode():
    generate = flat(help_text(["generate"], 120))
    assert "measured slower on an H100" in generate and "*slower*" in README
    assert "~1.3x faster end to end" in generate and "~1.3× faster end" in README
    for word in ("framewise", "chunkwise", "longvideo", "self-forcing", "float16", "bfloat16", "vp9", "gif"):
        assert word in generate, word
    extend = flat(help_text(["extend"], 120))
    assert "longvideo" not in extend and "framewise | chunkwise" in extend


def test_loading_lines_cpu_notice_and_plain_progress_without_a_tty(cf, tmp_path):
    """CliRunner is not a terminal: progress comes as plain lines, the last one when every frame is made."""
    r = gen(cf, PROMPT, "--frames", 17, "--seed", 1, "--out", tmp_path / "a.mp4")
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert "note: running on the CPU (--device cpu)" in err
    for model, name in (("text encoder (umT5)", "models_t5_umt5"), ("DiT", "causal_forcing.pt"),
                        ("VAE", "Wan2.1_VAE.pth")):
        assert re.search(rf"loading {re.escape(model)} [\d.]+ [kM]?B from \S*{re.escape(name)}", err), model
    lines = re.findall(r"generating (\d+)/(\d+) frames, ([\d.]+) fps \(([\d.]+)× real time\)", err)
    assert lines and lines[-1][:2] == ("17", "17") and all(total == "17" for _, total, _, _ in lines)
    assert float(lines[-1][3]) == pytest.approx(float(lines[-1][2]) / 16, abs=0.01)
    assert "/?" not in err


def test_plain_progress_lines_are_spaced_by_the_interval(capsys):
    from cfcli.cli.progress import ProgressView

    view = ProgressView(True, 16, interval=3600)
    for made in (0, 1, 2, 3):  # 3 made in 1.5 s, 3 of 3 done
        view.update(made, 3, made * 0.5 or 0.1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["generating 0/3 frames, 0.0 fps (0.00× real time)",
                     "generating 3/3 frames, 2.0 fps (0.12× real time)"]


def test_extend_counts_and_rates_only_generated_frames(cf, tmp_path):
    clip = tmp_path / "clip.mp4"
    assert gen(cf, PROMPT, "--frames", 17, "--seed", 3, "--fps", 30, "--out", clip, "--quiet").exit_code == 0
    out = tmp_path / "more.mp4"
    r = cf("extend", clip, *BASE, "--frames", 8, "--seed", 4, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["frames"] == 25 and summary["generated_frames"] == 8
    assert summary["generation_fps"] == pytest.approx(8 / summary["elapsed_s"])
    assert re.findall(r"generating \d+/(\d+) frames", r.stderr)[-1] == "8"
    assert "(8 new)" in r.stderr and "new frames move at the model's 16 fps" in r.stderr
    meta = read_video(out).metadata
    assert meta["source_seed"] == 3 and meta["seed"] == 4 and meta["motion_fps"] == 16 and meta["fps"] == 30
    assert meta["new_frames"] == 8 and meta["frames"] == 25


@pytest.mark.parametrize("preset, at, why", [
    ("tiny-framewise.yaml", "0.6", "earlier than asked: frame 10 is made by the latent frame that starts at frame 9"),
    ("tiny-chunkwise.yaml", "0.1", "later than asked: a switch starts at the next block (3 latent frames, frame 9)"),
])
def test_prompt_switch_says_why_it_moved(cf, tmp_path, preset, at, why):
    r = cf("generate", PROMPT, "--preset", FIXTURES / preset, "--device", "cpu", "--frames", 17, "--seed", 1,
           "--prompt-at", at, "the fox sleeps", "--out", tmp_path / "s.mp4")
    assert r.exit_code == 0, r.output
    assert why in flat(r.stderr)


def test_count_makes_distinct_videos_with_printed_seeds(cf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = gen(cf, PROMPT, "--frames", 1, "--seed", 10, "--count", 3)
    assert r.exit_code == 0, r.output
    paths = [Path("outputs") / f"a-fox-running-through-a-snowy-forest-at-dawn-{s}.mp4" for s in (10, 11, 12)]
    clips = [read_video(p) for p in paths]
    assert [c.metadata["seed"] for c in clips] == [10, 11, 12]
    assert all(f"seed {s}" in r.stderr for s in (10, 11, 12))
    assert not torch.equal(clips[0].frames, clips[1].frames) and not torch.equal(clips[1].frames, clips[2].frames)
    r = gen(cf, PROMPT, "--frames", 1, "--count", 2, "--out", "pair.mp4", "--json", "--quiet")
    seeds = [json.loads(line)["seed"] for line in r.stdout.splitlines()]
    assert len(set(seeds)) == 2 and Path("pair-000.mp4").is_file() and Path("pair-001.mp4").is_file()
    assert gen(cf, PROMPT, "--count", 0).exit_code == 1


def test_height_and_width_change_the_video_size(cf, tmp_path):
    out = tmp_path / "tall.mp4"
    r = gen(cf, PROMPT, "--frames", 9, "--seed", 2, "--height", 96, "--width", 64, "--out", out)
    assert r.exit_code == 0, r.output
    clip = read_video(out)
    assert clip.frames.shape == (9, 3, 96, 64)
    assert (clip.metadata["height"], clip.metadata["width"]) == (96, 64)
    assert clip.frames.float().std() > 1  # a picture, not a constant
    r = gen(cf, PROMPT, "--height", 50, "--out", tmp_path / "bad.mp4")
    assert r.exit_code == 1 and "--height must be a positive multiple of 16" in r.output


def test_poster_is_the_first_frame_and_never_overwritten(cf, tmp_path):
    out = tmp_path / "p.mkv"
    r = gen(cf, PROMPT, "--frames", 5, "--seed", 2, "--codec", "ffv1", "--out", out, "--poster")
    assert r.exit_code == 0, r.output
    from PIL import Image

    poster = torch.tensor(np.asarray(Image.open(tmp_path / "p.jpg"))).permute(2, 0, 1).float()
    frames = read_video(out).frames.float()
    assert poster.shape == frames[0].shape
    assert (poster - frames).abs().mean(dim=(1, 2, 3)).argmin() == 0  # JPEG: near, closest to the first frame
    r = gen(cf, PROMPT, "--frames", 1, "--codec", "ffv1", "--out", tmp_path / "q.mkv", "--poster")
    assert r.exit_code == 0 and (tmp_path / "q.jpg").is_file()
    (tmp_path / "r.jpg").write_bytes(b"mine")
    r = gen(cf, PROMPT, "--frames", 5, "--out", tmp_path / "r.mp4", "--poster")
    assert r.exit_code == 1 and "r.jpg already exists" in r.output and not (tmp_path / "r.mp4").exists()
    assert gen(cf, PROMPT, "--frames", 1, "--out", tmp_path / "a.mp4").exit_code == 0
    assert not (tmp_path / "a.jpg").exists()  # opt-in


def test_open_plays_the_result_with_the_desktop_opener(cf, tmp_path, monkeypatch):
    import cfcli.cli.checks as checks
    import cfcli.cli.files as files

    calls = []
    monkeypatch.setattr(files.sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")  # a desktop with xdg-open (`--open` is refused up front without one)
    monkeypatch.setattr(checks.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(files.subprocess, "Popen", lambda argv, **kw: calls.append(argv))
    out = tmp_path / "o.mp4"
    assert gen(cf, PROMPT, "--frames", 1, "--out", out, "--open").exit_code == 0
    assert calls == [["xdg-open", str(out)]]
    monkeypatch.setattr(files.sys, "platform", "darwin")
    assert gen(cf, PROMPT, "--frames", 1, "--count", 2, "--out", out, "--open").exit_code == 0
    assert calls[1] == ["open", str(tmp_path)]  # several videos: their folder


def test_bench_on_the_cpu_has_no_h100_floor_and_names_the_cpu(cf):
    from cfcli.pipeline.bench import cpu_name

    r = cf("bench", "--preset", TINY, "--device", "cpu", "--repeat", 1, "--frames", 1)
    assert r.exit_code == 0, r.output
    assert "n/a" in r.stderr and not re.search(r"\b\d+%", r.stderr) and "700" not in r.stderr
    assert cpu_name() in r.stderr
    if Path("/proc/cpuinfo").is_file():
        assert cpu_name() != "x86_64"


def test_cpu_notice_quotes_the_last_cpu_bench(cf, tmp_path):
    r = cf("bench", "--preset", TINY, "--device", "cpu", "--repeat", 1, "--frames", 1, "--json")
    fps = json.loads(r.stdout)["fps_end_to_end"]
    r = gen(cf, PROMPT, "--frames", 1, "--out", tmp_path / "a.mp4")
    assert r.exit_code == 0 and f"`cf bench` measured {fps:.2g} frames/s here (tiny-framewise, 80×48)" in r.stderr


# `cf` as its console script runs it (`cfcli.cli.main`), with an atexit handler that says whether Python's own
# teardown ran.
AS_INSTALLED = """
import atexit, sys
atexit.register(lambda: print("python's teardown ran", flush=True))
sys.argv[0] = "cf"
from cfcli.cli import main
main()
"""


def cf_process(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", AS_INSTALLED, *map(str, args)], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}, timeout=300)


def test_a_command_that_imported_torch_ends_at_once_keeping_its_status_output_and_file(tmp_path):
    """After the summary the process ends without Python's teardown (compile workers, CUDA graphs, big modules):
    the file is whole, the summary reached stdout, a failure's status is kept; without torch nothing changes."""
    out = tmp_path / "videos" / "fox.mkv"
    args = ["generate", *BASE, PROMPT, "--frames", 5, "--seed", 2, "--out", out, "--codec", "ffv1"]
    done = cf_process(*args, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "teardown ran" not in done.stdout and json.loads(done.stdout)["path"] == str(out)
    clip = read_video(out)
    assert clip.frames.shape[0] == 5 and clip.metadata["seed"] == 2
    assert [p.name for p in out.parent.iterdir()] == ["fox.mkv"]  # no lock or temp file left behind
    again = cf_process(*args)  # refused (the file exists) after torch was imported
    assert again.returncode == 1 and "already exists" in again.stderr and "teardown ran" not in again.stdout
    version = cf_process("--version")
    assert version.returncode == 0 and version.stdout.splitlines() == [f"cf (cfcli) {__version__}",
                                                                       "python's teardown ran"]
