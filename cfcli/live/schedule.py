"""The live prompt schedule: a `TextSchedule` that grows while the video plays.

The sampler looks up each block's prompt by its first latent frame (`text_at` → `at(frame)`) right before the block
starts, and again before each later denoising step (`at(frame, step)`: this schedule has step positions, `by_step`).
A prompt submitted from the page waits here (encoded) until the next lookup: a cut lands at the next step of the block
in flight (its remaining steps and its clean pass run under it), exactly as `cf generate --prompt-at T@K` would have
at that block's time and step; a prompt that arrives after a block's last step, or during a pause between blocks,
lands at the next block's start (step 0), as `--prompt-at T` would. Two prompts submitted within one step: the later
one wins, the earlier is marked `superseded`. Thread-safe: the server thread submits, the generation thread looks up.
The generation thread runs with `StepSync` on the GPU, so a lookup comes about when the GPU reaches that step. A
block waiting for playback after its first step starts again (`reopen`) where a change that lands only at a block
start is waiting: its start is looked up afresh.

A block start is also where other switches land (`Weights.land`: a LoRA swap, `cfcli.live.loras`; never between
steps), and since the K/V are made by the DiT's weights, a K/V made before the weights last changed is made again from
the prompt's features.

A prompt with a transition lands at the next block start (never between steps), then blends in over its blocks
(`cfcli.pipeline.prompts`: block k of N gets (k+1)/(N+1) of it, from the features the block before it used); each
later block the sampler starts takes the next step, so the blocks and their features are the ones `cf generate
--prompt-at TIME~N` makes. The blends and their K/V are made ahead, off the generation thread, so a block start only
picks its blend up: the first by `submit` (on the thread that encoded the prompt, from what the last block showed),
each next one by `ahead` while the block before it is made. A blend not ready in time (a block started while the first
was being made, or the job ran late) is made at its block start, as before: the same bits either way. A cut landing
between steps ends a transition under way: the block's earlier steps keep their blend.
"""

import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from cfcli.pipeline.prompts import CUT, Transition, blend, landing_metadata


@dataclass
class LivePrompt:
    """One prompt of a live session and what became of it; `frame` counts the streamed video frames."""

    id: int
    prompt: str
    submitted: float  # time.perf_counter() when the client's message arrived
    state: str = "submitted"  # submitted → queued (encoded) → landed → shown (first frame made); or superseded,
    # dropped (the video ended first)
    latent: int | None = None  # first latent frame generated under it
    block: int | None = None  # the block it landed at: latent // block frames, context blocks included
    step: int | None = None  # the denoising step of that block it landed before (0: the block's start)
    frame: int | None = None
    made_s: float | None = None  # submitted → first frame made under it
    encoded_s: float | None = None  # submitted → encoded and queued
    landed_s: float | None = None  # submitted → landed (its block or step about to run)
    kv: Tensor | None = field(default=None, repr=False)
    features: Tensor | None = field(default=None, repr=False)  # umT5's, what `kv` is made again from
    kv_version: int = 0  # the `Weights.version` `kv` was made under (read before it was made)
    transition: Transition = CUT  # how it blends in from the prompt showing when it lands

    def as_message(self, fps: float) -> dict:
        seconds = None if self.frame is None else round(self.frame / fps, 4)
        extra = {"transition": self.transition.as_metadata()} if self.transition.blocks else {}
        return {"type": "prompt", "id": self.id, "prompt": self.prompt, "state": self.state, "latent": self.latent,
                "block": self.block, "step": self.step, "frame": self.frame, "seconds": seconds,
                "made_s": self.made_s} | extra


@dataclass
class Blend:
    """One transition block's blended features and the K/V made from them (`kv_version` as `LivePrompt`'s)."""

    features: Tensor = field(repr=False)
    kv: Tensor | None = field(default=None, repr=False)
    kv_version: int = -1


@dataclass
class Fade:
    """A transition under way: to `prompt`, from `source` (the features of the block before it landed); `blends[k]`
    is block k's, None until made; `next`: the step the next block takes (`len(blends)`: the prompt itself)."""

    source: Tensor = field(repr=False)
    prompt: LivePrompt
    blends: list[Blend | None]
    next: int = 0


class Weights(Protocol):
    """The DiT weights as the schedule sees them: changes that land at a block, and the K/V they make."""

    version: int  # bumped by each change of the weights

    def land(self, latent: int) -> None: ...  # the block starting at `latent` is next: apply a waiting change

    def text_kv(self, features: Tensor) -> Tensor: ...

    @property
    def has_pending(self) -> bool: ...

    @property
    def awaiting_frames(self) -> bool: ...


class LiveSchedule:
    """Cross-attention K/V by latent frame and step, appended to as prompts land; `frame_of(latent)` maps to stream
    frames. `weights`: where weight changes land and fresh K/V come from (None: the weights never change);
    `block_frames`: latent frames per block, which numbers the block a prompt lands at; `by_step`: a cut may land
    between the steps of the block in flight (else at the next block: `cf live --switch-at blocks`); `ahead(job)`:
    runs a job off the generation thread (default: at once, on the caller's); `handover(*tensors)`: called before what
    another thread made is published to the generation thread (`cfcli.live.side`)."""

    def __init__(self, opening: LivePrompt, first_latent: int, frame_of: Callable[[int], int],
                 on_change: Callable[[LivePrompt], None] = lambda p: None, weights: Weights | None = None,
                 block_frames: int = 1, ahead: Callable[[Callable[[], None]], None] = lambda job: job(),
                 by_step: bool = True, handover: Callable[..., None] = lambda *tensors: None):
        opening.state, opening.latent, opening.block, opening.step, opening.frame = "landed", 0, 0, 0, 0
        self.entries, self._starts = [opening], [(0, 0)]  # (latent frame, step) positions
        self._blocks: list[LivePrompt | Blend] = [opening]  # what each of `_starts` serves
        self._fade: Fade | None = None
        self.first_latent, self.frame_of, self.on_change, self.weights = first_latent, frame_of, on_change, weights
        self.block_frames, self.ahead, self.handover = block_frames, ahead, handover
        self.by_step = by_step  # a cut may land between steps: the samplers then look the text up before each one
        self._pending: LivePrompt | None = None
        self._first: tuple[int, Blend] | None = None  # the pending prompt's first blend, made after that many blocks
        self._seen = -1  # the latest latent frame looked up: blocks up to it have started
        self._swapped_at = -1  # the latest block start a weight change landed at
        self._lock = threading.Lock()

    def submit(self, prompt: LivePrompt) -> None:
        """Queue an encoded prompt for the next step or block to start; a transition's first blend is made now, on the
        calling thread, from what the last block started showed (what the block it lands at blends from)."""
        first = None
        if prompt.transition.blocks:
            with self._lock:
                started, source = len(self._blocks), self._blocks[-1].features
            first = (started, self._blend(source, prompt, 0))  # outside the lock: block starts must not wait for it
        self.handover(prompt.kv, prompt.features, *((first[1].features, first[1].kv) if first else ()))
        with self._lock:
            old, self._pending, self._first = self._pending, prompt, first
            prompt.state, prompt.encoded_s = "queued", round(time.perf_counter() - prompt.submitted, 4)
        if old is not None:
            old.state = "superseded"
            self.on_change(old)

    def at(self, frame: int, step: int = 0) -> Tensor:
        if step:
            return self._at_step(frame, step)
        landed = None
        with self._lock:
            fresh, self._seen = frame > self._seen, max(frame, self._seen)  # a block starting now, not a repeat
            switch = fresh and frame >= max(self.first_latent, 1)
        if switch and self.weights is not None:
            version = self.weights.version
            self.weights.land(frame)  # outside the lock: a swap takes a while, and submits must not wait for it
            if self.weights.version != version:
                self._swapped_at = frame
        with self._lock:
            if self._pending is not None and switch:
                landed, self._pending = self._pending, None
                self._land(landed, frame, 0)
                # from what the last block showed; `submit` made the first blend from it unless a block started since
                self._fade = Fade(self._blocks[-1].features, landed, [None] * landed.transition.blocks)
                if self._first is not None and self._first[0] == len(self._blocks):
                    self._fade.blends[0] = self._first[1]
                self._first = None
            if self._fade is not None and switch:
                self._step(frame)
            kv = self._current_kv(self._blocks[bisect_right(self._starts, (frame, 0)) - 1])
        if landed is not None:
            self.on_change(landed)
        return kv

    def _at_step(self, frame: int, step: int) -> Tensor:
        """Before denoising step `step` of the block at `frame` (started already): a waiting cut lands here and ends a
        transition under way; a prompt with a transition waits for the next block start."""
        landed = None
        with self._lock:
            p = self._pending
            if p is not None and not p.transition.blocks and frame >= max(self.first_latent, 1):
                landed, self._pending, self._first, self._fade = p, None, None, None
                self._land(landed, frame, step)
                self._append(landed, (frame, step))
            kv = self._current_kv(self._blocks[bisect_right(self._starts, (frame, step)) - 1])
        if landed is not None:
            self.on_change(landed)
        return kv

    def _land(self, p: LivePrompt, frame: int, step: int) -> None:
        p.state, p.latent, p.step, p.frame = "landed", frame, step, self.frame_of(frame)
        p.landed_s = round(time.perf_counter() - p.submitted, 4)
        p.block = frame // self.block_frames
        self.entries.append(p)

    def _append(self, served: "LivePrompt | Blend", position: tuple[int, int]) -> None:
        """`served` serves from `position` on; the blend before it has served its part, so its K/V's device memory
        goes."""
        if isinstance(self._blocks[-1], Blend):
            self._blocks[-1].kv = None
        self._blocks.append(served)
        self._starts.append(position)

    def _step(self, frame: int) -> None:
        """The block starting at `frame` takes the next step of the transition under way (its end: the prompt), and
        the step after it is made ahead, while this block is."""
        f, k = self._fade, self._fade.next
        if k < len(f.blends):
            block = f.blends[k] or self._blend(f.source, f.prompt, k)  # not ready: made now, as it would have been
            f.next = k + 1
            if k + 1 < len(f.blends):
                self.ahead(lambda: self._make_ahead(f, k + 1))
        else:
            block, self._fade = f.prompt, None
        self._append(block, (frame, 0))

    def _make_ahead(self, f: Fade, k: int) -> None:
        if self._fade is f:  # not replaced by a later prompt meanwhile
            b = self._blend(f.source, f.prompt, k)
            self.handover(b.features, b.kv)
            f.blends[k] = b  # handed over whole: a block start sees it made, or None

    def _blend(self, source: Tensor, p: LivePrompt, k: int) -> Blend:
        """Block k's blend of the transition to `p`, its K/V made too; touches no shared state, so any thread may make
        it (what it returns is only read once handed over)."""
        b = Blend(blend(source, p.features, p.transition.weight(k), p.transition.kind))
        if self.weights is not None:
            self._current_kv(b)
        return b

    def _current_kv(self, p: LivePrompt | Blend) -> Tensor:
        """`p`'s K/V, made again from its features if the weights changed since it was made."""
        if p.kv is None or (self.weights is not None and p.kv_version != self.weights.version):
            p.kv_version = self.weights.version  # read first: a change landing meanwhile leaves these K/V stale
            p.kv = self.weights.text_kv(p.features)
        return p.kv

    def reopen(self) -> bool:
        """The block started last is waiting after its first step (live pacing, `LiveSession._idle`): if a change
        that lands only at a block start is waiting (a transition, a weight change), that block is to start again, so
        the change lands there rather than a block later; its start is then looked up afresh. Not when something
        landed at that block's start already (a cut, a transition's step, a weight change: the change waits for the
        next block). True: start it again."""
        with self._lock:
            p, frame = self._pending, self._seen
            waiting = (p is not None and p.transition.blocks) or (self.weights is not None and self.weights.has_pending)
            landed = self._starts[-1] >= (frame, 0) or self._swapped_at == frame
            if not waiting or landed or frame < max(self.first_latent, 1):
                return False
            self._seen = frame - 1
            return True

    def frames_written(self, frames: int) -> list[LivePrompt]:
        """Mark the prompts whose first frame is among the first `frames` streamed frames as shown."""
        now, shown = time.perf_counter(), []
        with self._lock:
            for p in self.entries[1:]:
                if p.state == "landed" and p.frame < frames:
                    p.state, p.made_s = "shown", round(now - p.submitted, 4)
                    shown.append(p)
        return shown

    def as_metadata(self, fps: float, frame_offset: int = 0) -> list[list]:
        """`[[seconds, prompt(, transition or step)], ...]` as `cf generate` stores its schedule (`frame_offset`:
        frames before the stream)."""
        with self._lock:
            return [[round((p.frame + frame_offset) / fps, 4), p.prompt] + landing_metadata(p.transition, p.step)
                    for p in self.entries]

    def drop_pending(self) -> LivePrompt | None:
        """The video ended with a prompt still waiting: it never lands (`dropped`)."""
        with self._lock:
            p, self._pending, self._first = self._pending, None, None
        if p is not None:
            p.state = "dropped"
        return p

    @property
    def awaiting_frames(self) -> bool:
        """A prompt (or weight change) has landed and its first frame is not written yet."""
        with self._lock:
            landed = any(p.state == "landed" for p in self.entries[1:])
        return landed or (self.weights is not None and self.weights.awaiting_frames)

    @property
    def last_block(self) -> int | None:
        """The last block started (context blocks counted, as `LivePrompt.block`), or None before the first."""
        return None if self._seen < 0 else self._seen // self.block_frames

    @property
    def has_pending(self) -> bool:
        """A prompt or weight change waits for the next step or block."""
        return self._pending is not None or (self.weights is not None and self.weights.has_pending)
