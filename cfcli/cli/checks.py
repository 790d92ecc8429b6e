"""Option values checked in one pass before anything loads: each bad value is one message naming it and its range,
and options that cannot go together are refused by name instead of one silently winning."""

import math
import os
import shutil
import sys
from pathlib import Path

from cfcli.errors import CfError

SEED_MAX = 2**63 - 1  # torch takes any 64-bit seed; the signed range is the one every tool reads back alike
FPS_RANGE = (1, 240)
CRF_RANGE = (0, 51)


def given(ctx, option: str) -> bool:
    """Whether the user typed the option (not just left its default); `ctx` is the command's typer.Context."""
    source = ctx.get_parameter_source(option) if ctx is not None else None
    return getattr(source, "name", None) == "COMMANDLINE"


def check_options(frames: int | None = None, seconds: float | None = None, seed: int | None = None,
                  fps: int | None = None, crf: int | None = None) -> None:
    """Refuse values no run can use (lengths past the model's position table: `check_length` once the preset is
    known, before anything loads)."""
    if frames is not None and seconds is not None:
        raise CfError("--frames and --seconds both set the length", "give one of them")
    if frames is not None:
        check_length(frames, "--frames")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise CfError(f"--seconds must be a positive number, got {seconds}", "e.g. --seconds 5")
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise CfError(f"--seed {seed} is out of range", f"use a whole number from 0 to {SEED_MAX} (2**63 - 1)")
    if fps is not None and not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
        raise CfError(f"--fps {fps} is out of range", f"use {FPS_RANGE[0]} to {FPS_RANGE[1]} frames per second")
    if crf is not None and not CRF_RANGE[0] <= crf <= CRF_RANGE[1]:
        raise CfError(f"--crf {crf} is out of range", f"use {CRF_RANGE[0]} (best) to {CRF_RANGE[1]} (smallest)")


def check_length(frames: int, option: str, seconds: float | None = None, fps: float | None = None,
                 geometry=None) -> None:
    """`frames` (from `option`, or from `seconds` at `fps`) must be positive and, given the preset's `geometry` (a
    `cfcli.models.geometry.Geometry`), fit the model's position table."""
    if frames <= 0:
        raise CfError(f"{option} must be positive, got {frames}")
    if geometry is not None and frames > geometry.max_video_frames:
        given_as = f"{option} {seconds:g}" if seconds is not None else f"{option} {frames}"
        limit = geometry.max_video_frames
        most = f"{limit} frames" + (f" ({limit / fps:g} s at {fps:g} fps)" if fps else "")
        raise CfError(f"{given_as} is longer than the model can make", f"the maximum is {most} (its position table)")


def codec_note(ctx, codec: str) -> str | None:
    """A note when --crf was given to a codec without a quality setting (the table's options never use it)."""
    from cfcli.pipeline.containers import get

    chosen = get(codec)
    if not given(ctx, "crf") or any("{crf}" in v for v in chosen.options.values()):
        return None
    why = "is lossless" if chosen.lossless else "has no quality setting (a 256-colour palette per frame)"
    return f"{codec} {why} and ignores --crf"


def check_prompt_sources(prompt: str | None, prompt_file: Path | None) -> None:
    """A prompt on the command line and --prompt-file: one of them would be dropped."""
    if prompt is not None and prompt_file is not None:
        raise CfError(f"a prompt and --prompt-file {prompt_file} were both given",
                      "put every prompt in the file, or give the one prompt without --prompt-file")


def check_open(open_: bool) -> None:
    """`--open` needs a desktop to play on: on a headless machine say so before the run, not silently after it."""
    if not open_ or sys.platform in ("win32", "darwin"):  # startfile / open are always there
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise CfError("--open needs a display, and this machine has none (DISPLAY and WAYLAND_DISPLAY are unset)",
                      "leave out --open; the summary prints the video's path")
    if shutil.which("xdg-open") is None:
        raise CfError("--open needs xdg-open, which is not installed", "install xdg-utils, or leave out --open")


def check_posters(runs: list[tuple[Path, Path | None]], overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """`--poster` writes `<video>.jpg` beside each video of `runs` ((video, latents) pairs): refuse a poster that is
    another output of the run (`--save-latents x.jpg`), another poster or an input, and an existing file without
    --overwrite. Linear in the number of videos."""
    from cfcli.cli.files import PathSet, poster_path
    from cfcli.pipeline.outputs import check

    taken = PathSet()
    for video, latents in runs:
        taken.add(video, "a video of this run")
        if latents is not None:
            taken.add(latents, f"--save-latents {latents}")
    for path in inputs:
        taken.add(path, "an input of the run")
    for video, _ in runs:
        poster = poster_path(video)
        if (what := taken.get(poster)) is not None:
            raise CfError(f"--poster would write {poster}, which is {what}",
                          "give the latents (or --out) another name, e.g. latents.safetensors, or leave out --poster")
        check(poster, overwrite, "--poster")
        taken.add(poster, "the poster of another video of this run")
