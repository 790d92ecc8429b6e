"""Prompt switching: a schedule of prompts by time, validated against the video, and the per-block text lookup.

A schedule is the opening prompt at 0 s plus switches at later times, from `--prompt-at TIME PROMPT` and/or a
`--prompt-schedule` file of `SECONDS<TAB>PROMPT` lines. A time maps to the nearest video frame
(`round(seconds·fps)`, halves up), that frame to the latent frame covering it (`Geometry.latent_at`: with the VAE's
time stride s, latent 0 makes frame 0 and latent k ≥ 1 frames s(k−1)+1…sk), and the switch takes effect at the
first block whose first latent frame is at or after that latent frame (blocks are 1 or 3 latent frames).
`TextSchedule` then hands each block the cross-attention K/V of its prompt; the visual KV cache is never touched by a
switch.

A switch may land between the denoising steps of its block (`TIME@K`, 1 ≤ K < the preset's steps): the block's steps
0…K−1 run under the prompt before it, its steps K… and its clean pass under the new one (`cf live` lands a prompt so,
in the block in flight). `TextSchedule` then holds step positions, looked up before each step; without any, one lookup
per block as before. A step is never combined with a transition, which starts at a block start.

A switch may be a transition (`TIME~N`, `TIME~N:slerp`): over N blocks the features (umT5's outputs, before the DiT's
text projection) blend from what the block before the switch used to the new prompt's. Block k = 0…N−1 from the switch
gets weight (k+1)/(N+1) of the new prompt, block N the new prompt itself; N = 0 is the instant cut. A switch arriving
mid-transition blends from the last block's (blended) features. Blends are made in float32 on the CPU, so the live page
and `cf generate` make the same bits; each blended block's K/V then comes from `Engine.text_kv`.
"""

import math
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cfcli.errors import CfError
from cfcli.models.geometry import Geometry

_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")


MAX_TRANSITION_BLOCKS = 64
KINDS = {"linear": "linear", "lerp": "linear", "spherical": "spherical", "slerp": "spherical"}  # name → kind


@dataclass(frozen=True)
class Transition:
    """A switch's blend: over `blocks` blocks, `kind` "linear" (lerp) or "spherical" (slerp, per token)."""

    blocks: int = 0
    kind: str = "linear"

    def weight(self, k: int) -> float:
        """The new prompt's share in the k-th block from the switch (k < blocks)."""
        return (k + 1) / (self.blocks + 1)

    def as_metadata(self) -> dict:
        return {"blocks": self.blocks, "kind": self.kind}


CUT = Transition()


@dataclass(frozen=True)
class Switch:
    """`prompt` from `seconds` on (from denoising step `step` of that block); `source` says where it was given, for
    error messages."""

    seconds: float
    prompt: str
    source: str = ""
    transition: Transition = CUT
    step: int = 0

    @property
    def position(self) -> tuple[float, int]:
        return self.seconds, self.step


def parse_transition(text: str, source: str = "") -> Transition:
    """`N`, `N:lerp` or `N:slerp` (also `linear`, `spherical`): the blend after a switch time's `~`."""
    where = f" ({source})" if source else ""
    blocks, _, kind = text.strip().partition(":")
    if not blocks.isdigit() or int(blocks) > MAX_TRANSITION_BLOCKS or (kind or "linear") not in KINDS:
        raise CfError(f"{text!r}{where} is not a transition",
                      f"write TIME~N or TIME~N:slerp, N blocks from 0 to {MAX_TRANSITION_BLOCKS} (2.5~3, 2.5~3:slerp)")
    return Transition(int(blocks), KINDS[kind or "linear"])


def parse_switch_time(text: str, source: str = "") -> tuple[float, Transition]:
    """A switch's `TIME` or `TIME~TRANSITION`."""
    time, tilde, transition = text.partition("~")
    return parse_time(time, source), parse_transition(transition, source) if tilde else CUT


def parse_switch(text: str, prompt: str, source: str) -> Switch:
    """A switch from its time column (`TIME`, `TIME~N[:slerp]` or `TIME@K`) and its prompt."""
    time, at, step = text.partition("@")
    if not at:
        seconds, transition = parse_switch_time(time, source)
        return Switch(seconds, prompt.strip(), source, transition)
    where = f" ({source})" if source else ""
    if "~" in time or "~" in step:
        raise CfError(f"{text!r}{where} has both a transition and a step",
                      "a transition starts at a block start: write TIME~N, or TIME@K for a cut before step K")
    if not (step.isascii() and step.isdigit()) or int(step) < 1:
        raise CfError(f"{text!r}{where} is not a step position",
                      "write TIME@K: before denoising step K (from 1) of the block at TIME, e.g. 2.5@2")
    return Switch(parse_time(time, source), prompt.strip(), source, CUT, int(step))


def blend(a: Tensor, b: Tensor, weight: float, kind: str) -> Tensor:
    """Features `weight` of the way from `a` to `b` ([1, L, D]), float32 on the CPU whatever the inputs' device.

    Spherical: per token (row), along the great circle between the rows' directions, the norms following;
    rows at a zero vector (umT5's padding) or nearly parallel fall back to linear."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    line = torch.lerp(a, b, weight)
    if kind == "linear":
        return line
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    cos = ((a * b).sum(-1, keepdim=True) / (na * nb).clamp_min(1e-30)).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    arc = (torch.sin((1 - weight) * omega) * a + torch.sin(weight * omega) * b) / sin.clamp_min(1e-30)
    return torch.where((na > 0) & (nb > 0) & (sin > 1e-4), arc, line)


def blended_blocks(starts: "tuple[int, ...] | list[int]", features: list, transitions: list[Transition],
                   block_frames: int, steps: "tuple[int, ...] | None" = None) -> list[tuple[int, Tensor, int | None]]:
    """(first latent frame, features, the entry whose own features they are or None for a blend) per change of
    features: each entry's transition blocks, then the entry, cut where the next entry starts. With `steps` (each
    entry's step position, 0 at a block start) an entry lands before its step of its block, and a blend, at a block
    start, serves the steps of its block before the next entry's."""
    steps = steps or (0,) * len(starts)
    out: list[tuple[int, Tensor, int | None]] = []
    for i, (start, f, t) in enumerate(zip(starts, features, transitions, strict=True)):
        end = (starts[i + 1], steps[i + 1]) if i + 1 < len(starts) else (math.inf, 0)
        blocks = t.blocks if out else 0  # the opening prompt has nothing to blend from
        src = out[-1][1] if out else None
        for k in range(blocks):
            if (start + k * block_frames, 0) >= end:
                break
            out.append((start + k * block_frames, blend(src, f, t.weight(k), t.kind), None))
        if (start + blocks * block_frames, steps[i]) < end:
            out.append((start + blocks * block_frames, f, i))
    return out


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
    """`SECONDS<TAB>PROMPT` lines (spaces work as the separator too; SECONDS as `--prompt-at`'s TIME, `~N` or `@K`
    included); blank lines and `#` comments are skipped."""
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
        switches.append(parse_switch(time, prompt, source))
    if not switches:
        raise CfError(f"{path} holds no prompt switches", "write one SECONDS<TAB>PROMPT line per switch")
    return switches


def parse_prompt_at(pairs: list[tuple[str, str]]) -> list[Switch]:
    """`--prompt-at TIME PROMPT` pairs (TIME may carry a `~N[:slerp]` transition or an `@K` step), in the order
    given."""
    return [parse_switch(time, prompt, f"--prompt-at {time}") for time, prompt in pairs]


def _fmt(seconds: float, step: int = 0) -> str:
    return f"{seconds:g}s" + (f"@{step}" if step else "")


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
        entries = sorted(switches, key=lambda s: s.position)
        if entries and entries[0].seconds == 0 and entries[0].transition.blocks:
            raise CfError(f"the prompt at 0s ({entries[0].source}) has a transition, but nothing comes before it",
                          "give transitions to later switches only")
        for a, b in zip(entries, entries[1:]):
            if a.position == b.position:
                raise CfError(f"two prompts start at {_fmt(*a.position)} ({a.source}; {b.source})",
                              "give each time one prompt")
        if entries and entries[0].seconds == 0 and entries[0].step:
            raise CfError(f"the prompt at {_fmt(0, entries[0].step)} ({entries[0].source}) has a step, but no prompt "
                          "comes before it", "give the opening prompt at 0, and steps to later switches only")
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

    @property
    def transitions(self) -> list[Transition]:
        return [e.transition for e in self.entries]

    @property
    def steps(self) -> tuple[int, ...]:
        """The denoising step each entry lands before (0: its block's start)."""
        return tuple(e.step for e in self.entries)

    def as_metadata(self) -> list[list]:
        """`[seconds, prompt]` per entry, `[seconds, prompt, {"blocks", "kind"}]` for a transition,
        `[seconds, prompt, {"step": K}]` for a switch before step K of its block."""
        return [[e.seconds, e.prompt] + landing_metadata(e.transition, e.step) for e in self.entries]

    def check_steps(self, steps: int, label: str, between: bool) -> None:
        """Refuse a step position the video's sampler cannot land at: K outside 1…`steps`−1, or any K where
        `between` is False (a sampler that switches prompts at block starts only; `label` names it)."""
        for e in self.entries:
            if e.step and not between:
                raise CfError(f"the {label} sampler switches prompts at block starts only ({e.source})",
                              f"leave out @{e.step}")
            if e.step >= steps:
                valid = f"1 to {steps - 1}" if steps > 1 else "none: the preset takes one step per block"
                raise CfError(f"step {e.step} ({e.source}) is not between two of the preset's {steps} denoising "
                              f"steps", f"give @K with K from {valid}")

    def block_starts(self, fps: float, video_frames: int, block_frames: int, geometry: Geometry) -> tuple[int, ...]:
        """First latent frame of the block where each prompt takes effect; raises CfError for a switch that never shows.

        A switch past the last frame, in the last block (no later block to switch at), or on the same block as the
        previous prompt is refused rather than silently dropped (a later step of that block, `@K`, is fine), and so is
        a step in the first block (no prompt before it to switch from).
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
            if s.step and start == 0:
                raise CfError(f"the prompt switch at {_fmt(s.seconds, s.step)} ({s.source}) falls in the first block, "
                              "which no earlier prompt starts", "give @K to switches after the first block only")
            if (start, s.step) <= (starts[-1], prev.step):
                raise CfError(f"the prompts at {_fmt(prev.seconds, prev.step)} and {_fmt(s.seconds, s.step)} start "
                              f"at the same block (frame {g.first_frame_of(start)})",
                              f"space switches at least one block ({g.continuation_frames(block_frames)} frames) "
                              "apart, or land the later one at a later step of the block (TIME@K)")
            starts.append(start)
        return tuple(starts)


@dataclass(frozen=True)
class TextSchedule:
    """Cross-attention K/V by latent frame: `kvs[i]` serves blocks starting at or after `starts[i]` (starts[0] = 0);
    with `steps`, from denoising step `steps[i]` of the block at `starts[i]` on (0: the block's start).

    Host integers only, so a lookup in the sampler loop never waits for the device.
    """

    starts: tuple[int, ...]
    kvs: tuple[Tensor, ...]
    steps: tuple[int, ...] | None = None

    def __post_init__(self):
        keys = self._keys()
        if not self.starts or keys[0] != (0, 0) or len(self.starts) != len(self.kvs) \
                or any(a >= b for a, b in zip(keys, keys[1:])) or min(k for _, k in keys) < 0:
            raise ValueError(f"bad text schedule starts {self.starts} (steps {self.steps})")

    def _keys(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.steps or [0] * len(self.starts), strict=True))

    @property
    def by_step(self) -> bool:
        """Whether the text may change between a block's denoising steps (the samplers then look it up per step)."""
        return self.steps is not None

    def at(self, frame: int, step: int = 0) -> Tensor:
        if self.steps is None:
            return self.kvs[bisect_right(self.starts, frame) - 1]
        return self.kvs[bisect_right(self._keys(), (frame, step)) - 1]


def text_at(text: "Tensor | TextSchedule | None", frame: int, step: int = 0) -> Tensor:
    """Cross-attention K/V for denoising step `step` (0: the block's start) of the block starting at latent `frame`;
    a plain tensor (one prompt) serves every block.

    Any object with an `at(frame)` method is a schedule (`cf live` steers with one that grows while it plays); one
    that is `by_step` takes `at(frame, step)` too."""
    if not hasattr(text, "at"):
        return text
    return text.at(frame, step) if step else text.at(frame)


def by_step(text) -> bool:
    """Whether `text` is a schedule that may change between a block's steps (`by_step`): only then do the samplers
    look it up before each step rather than once per block."""
    return getattr(text, "by_step", False)


def landing_metadata(transition: Transition, step: int) -> list[dict]:
    """A schedule entry's third item, how it lands: `[{"blocks", "kind"}]` for a transition, `[{"step": K}]` before
    step K, `[]` for a cut at its block's start."""
    if transition.blocks:
        return [transition.as_metadata()]
    return [{"step": step}] if step else []


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
