"""Values no run can use, refused before anything loads, each with one message naming it and its range: the CLI's
options and the Python API's arguments alike (`cfcli.session`)."""

import math

from cfcli.errors import CfError

SEED_MAX = 2**63 - 1  # torch takes any 64-bit seed; the signed range is the one every tool reads back alike
FPS_RANGE = (1, 240)
CRF_RANGE = (0, 51)


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
