"""Prompt switching: a schedule of prompts by time, validated against the video, and the per-block text lookup.

A schedule is the opening prompt at 0 s plus switches at later times, from `--prompt-at TIME PROMPT` and/or a
`--prompt-schedule` file of `SECONDS<TAB>PROMPT` lines. A time maps to the nearest video frame
(`round(seconds·fps)`, halves up), that frame to the latent frame covering it (`Geometry.latent_at`: with the VAE's
time stride s, latent 0 makes frame 0 and latent k ≥ 1 frames s(k−1)+1…sk), and the switch takes effect at the
first block whose first latent frame is at or after that latent frame (blocks are 1 or 3 latent frames).
`TextSchedule` then hands each block the cross-attention K/V of its prompt; the visual KV cache is never touched by a
switch.
"""

import math
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from cfcli.errors import CfError
from cfcli.models.geometry import Geometry

_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")


@dataclass(frozen=True)
class Switch:
    """`prompt` from `seconds` on; `source` says where it was given, for error messages."""

    seconds: float
    prompt: str
    source: str = ""


def parse_time(text: str, source: str = "") -> float:
    """Seconds from `12`, `12.5`, `12s`, `1:05` (m:ss) or `1:02:03.5` (h:mm:ss)."""
    where = f" ({source})" if source else ""
    raw = text.strip()
    if raw.startswith("-"):
        raise CfError(f"time {text!r}{where} is negative", "times count from the start of the video: 0, 12s, 1:05")
    parts = (raw[:-1] if raw.endswith("s") else raw).split(":")
    if not 1 <= len(parts) <= 3 or not all(_NUMBER.fullmatch(p) for p in parts) \
            or any("." in p for p in parts[:-1]) or (len(parts) > 1 and float(parts[-1]) >= 60) \
            or (len(parts) == 3 and int(parts[1]) >= 60):
        raise CfError(f"{text!r}{where} is not a time", "write seconds (12, 12.5, 12s), m:ss (1:05) or h:mm:ss")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds


def read_text_file(path: Path, option: str, what: str) -> str:
    """The UTF-8 text file given by `option` (holding `what`); an unreadable, non-UTF-8 or binary one (NUL bytes) is
    refused with one message."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CfError(f"cannot read {option} {path}: {exc.strerror or exc}",
                      f"give a readable text file of {what}") from exc
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise CfError(f"{option} {path} is not UTF-8 text", f"give a plain text file of {what}")
    return text


def read_schedule_file(path: Path) -> list[Switch]:
    """`SECONDS<TAB>PROMPT` lines (spaces work as the separator too); blank lines and `#` comments are skipped."""
    text = read_text_file(path, "--prompt-schedule", "SECONDS<TAB>PROMPT lines")
    switches = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        source = f"line {n} of {Path(path).name}"
        time, sep, prompt = line.partition("\t")
        if not sep:  # a time never holds spaces, so the first run of spaces separates as well as a tab
            time, _, prompt = line.partition(" ")
        switches.append(Switch(parse_time(time, source), prompt.strip(), source))
    if not switches:
        raise CfError(f"{path} holds no prompt switches", "write one SECONDS<TAB>PROMPT line per switch")
    return switches


def parse_prompt_at(pairs: list[tuple[str, str]]) -> list[Switch]:
    """`--prompt-at TIME PROMPT` pairs, in the order given."""
    return [Switch(parse_time(time, f"--prompt-at {time}"), prompt.strip(), f"--prompt-at {time}")
            for time, prompt in pairs]


def _fmt(seconds: float) -> str:
    return f"{seconds:g}s"


def encodable(text: str) -> bool:
    """Whether `text` is valid UTF-8 when written (a lone surrogate, `"\\ud800"` in JSON, is not: a file's metadata
    could not hold it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_encodable(text: str, what: str = "the prompt") -> None:
    """Refuse text a clip's metadata cannot hold, before anything loads (not after the video is made)."""
    if not encodable(text):
        raise CfError(f"{what} is not valid Unicode text (it holds a lone surrogate such as \\ud800)",
                      "retype the prompt, or fix the file it came from")


@dataclass(frozen=True)
class PromptSchedule:
    """One video's prompts by start time: `entries[0]` is the opening prompt at 0 s, then the switches in order."""

    entries: tuple[Switch, ...]

    @classmethod
    def build(cls, opening: str | None, switches: list[Switch]) -> "PromptSchedule":
        """Sort and check the switches; a switch at 0 s gives the opening prompt when `opening` is None."""
        for s in switches:
            if not s.prompt:
                raise CfError(f"the prompt switch at {_fmt(s.seconds)} ({s.source}) has no prompt",
                              "write the prompt after the time: 12s<TAB>the fox jumps into the river")
            check_encodable(s.prompt, f"the prompt switch at {_fmt(s.seconds)} ({s.source})")
        if opening is not None:
            check_encodable(opening)
        entries = sorted(switches, key=lambda s: s.seconds)
        for a, b in zip(entries, entries[1:]):
            if a.seconds == b.seconds:
                raise CfError(f"two prompts start at {_fmt(a.seconds)} ({a.source}; {b.source})",
                              "give each time one prompt")
        if opening is not None and opening.strip():
            if entries and entries[0].seconds == 0 and entries[0].prompt != opening.strip():
                raise CfError(f"two opening prompts: PROMPT and the one at 0s ({entries[0].source})",
                              "give the prompt from 0s once: as PROMPT or as a schedule line at 0")
            if not entries or entries[0].seconds != 0:
                entries.insert(0, Switch(0.0, opening.strip(), "PROMPT"))
        elif not entries or entries[0].seconds != 0:
            raise CfError("no prompt for the start of the video",
                          'give PROMPT (cf generate "a fox in the snow" --prompt-at 12s "...") or a schedule line '
                          "at 0")
        return cls(tuple(entries))

    @property
    def opening(self) -> str:
        return self.entries[0].prompt

    @property
    def has_switches(self) -> bool:
        return len(self.entries) > 1

    def prompts(self) -> list[str]:
        """The distinct prompts, in order of first use (each is encoded once)."""
        return list(dict.fromkeys(e.prompt for e in self.entries))

    def as_metadata(self) -> list[list]:
        return [[e.seconds, e.prompt] for e in self.entries]

    def block_starts(self, fps: float, video_frames: int, block_frames: int, geometry: Geometry) -> tuple[int, ...]:
        """First latent frame of the block where each prompt takes effect; raises CfError for a switch that never shows.

        A switch past the last frame, in the last block (no later block to switch at), or on the same block as the
        previous prompt is refused rather than silently dropped.
        """
        g = geometry
        latents = (video_frames - 1) // g.time_stride + 1
        length = f"the video is {video_frames / fps:.2f}s ({video_frames} frames at {fps:g} fps)"
        starts = [0]
        for prev, s in zip(self.entries, self.entries[1:]):
            frame = math.floor(s.seconds * fps + 0.5)
            if frame >= video_frames:
                raise CfError(f"the prompt switch at {_fmt(s.seconds)} ({s.source}) is past the end of the video",
                              f"{length}; switch earlier, or make it longer with --frames/--seconds")
            latent = g.latent_at(frame)
            start = -(-latent // block_frames) * block_frames
            if start >= latents:
                last = g.first_frame_of(latents - block_frames)
                raise CfError(f"the prompt switch at {_fmt(s.seconds)} ({s.source}) falls in the video's last block",
                              f"a switch takes effect at the next block start, and the last block starts at frame "
                              f"{last} ({last / fps:.2f}s); {length}")
            if start == starts[-1]:
                raise CfError(f"the prompts at {_fmt(prev.seconds)} and {_fmt(s.seconds)} start at the same block "
                              f"(frame {g.first_frame_of(start)})",
                              f"space switches at least one block ({g.continuation_frames(block_frames)} frames) "
                              "apart")
            starts.append(start)
        return tuple(starts)


@dataclass(frozen=True)
class TextSchedule:
    """Cross-attention K/V by latent frame: `kvs[i]` serves blocks starting at or after `starts[i]` (starts[0] = 0).

    Host integers only, so a lookup in the sampler loop never waits for the device.
    """

    starts: tuple[int, ...]
    kvs: tuple[Tensor, ...]

    def __post_init__(self):
        if not self.starts or self.starts[0] != 0 or len(self.starts) != len(self.kvs) \
                or any(a >= b for a, b in zip(self.starts, self.starts[1:])):
            raise ValueError(f"bad text schedule starts {self.starts}")

    def at(self, frame: int) -> Tensor:
        return self.kvs[bisect_right(self.starts, frame) - 1]


def text_at(text: "Tensor | TextSchedule | None", frame: int) -> Tensor:
    """Cross-attention K/V for a block starting at latent `frame`; a plain tensor (one prompt) serves every block.

    Any object with an `at(frame)` method is a schedule (`cf live` steers with one that grows while it plays)."""
    return text.at(frame) if hasattr(text, "at") else text


def build_schedule(prompt: str | None, prompt_at: list[tuple[str, str]], schedule_file: Path | None = None):
    """The prompt schedule of `prompt_at` (time, prompt) pairs and a schedule file's lines together, opening with
    `prompt`; None without switches."""
    if not prompt_at and schedule_file is None:
        return None
    switches = read_schedule_file(schedule_file) if schedule_file is not None else []
    switches += parse_prompt_at([(str(time), text) for time, text in prompt_at])
    for switch in switches:
        if not math.isfinite(switch.seconds):
            raise CfError(f"the time of a prompt switch ({switch.source[:40]}…) is too large",
                          "give a time within the video, e.g. 12s or 1:05")
    return PromptSchedule.build(prompt, switches)
