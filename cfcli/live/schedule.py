"""The live prompt schedule: a `TextSchedule` that grows while the video plays.

The sampler looks up each block's prompt by its first latent frame (`text_at` → `at(frame)`), once, right before
the block starts. A prompt submitted from the page waits here (encoded) until that lookup: the first block not yet
started takes it, exactly as `cf generate --prompt-at` would have at that block's time. Two prompts submitted
within one block: the later one wins, the earlier is marked `superseded`. Thread-safe: the server thread submits,
the generation thread looks up.
"""

import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LivePrompt:
    """One prompt of a live session and what became of it; `frame` counts the streamed video frames."""

    id: int
    prompt: str
    submitted: float  # time.perf_counter() when the client's message arrived
    state: str = "submitted"  # submitted → queued (encoded) → landed → shown (first frame made); or superseded,
    # dropped (the video ended first)
    latent: int | None = None  # first latent frame generated under it
    frame: int | None = None
    made_s: float | None = None  # submitted → first frame made under it
    encoded_s: float | None = None  # submitted → encoded and queued
    kv: Tensor | None = field(default=None, repr=False)

    def as_message(self, fps: float) -> dict:
        seconds = None if self.frame is None else round(self.frame / fps, 4)
        return {"type": "prompt", "id": self.id, "prompt": self.prompt, "state": self.state, "latent": self.latent,
                "frame": self.frame, "seconds": seconds, "made_s": self.made_s}


class LiveSchedule:
    """Cross-attention K/V by latent frame, appended to as prompts land; `frame_of(latent)` maps to stream frames."""

    def __init__(self, opening: LivePrompt, first_latent: int, frame_of: Callable[[int], int],
                 on_change: Callable[[LivePrompt], None] = lambda p: None):
        opening.state, opening.latent, opening.frame = "landed", 0, 0
        self.entries, self._starts, self._kvs = [opening], [0], [opening.kv]
        self.first_latent, self.frame_of, self.on_change = first_latent, frame_of, on_change
        self._pending: LivePrompt | None = None
        self._seen = -1  # the latest latent frame looked up: blocks up to it have started
        self._lock = threading.Lock()

    def submit(self, prompt: LivePrompt) -> None:
        """Queue an encoded prompt for the next block to start."""
        with self._lock:
            old, self._pending = self._pending, prompt
            prompt.state, prompt.encoded_s = "queued", round(time.perf_counter() - prompt.submitted, 4)
        if old is not None:
            old.state = "superseded"
            self.on_change(old)

    def at(self, frame: int) -> Tensor:
        landed = None
        with self._lock:
            fresh, self._seen = frame > self._seen, max(frame, self._seen)  # a block starting now, not a repeat
            if self._pending is not None and fresh and frame >= max(self.first_latent, 1):
                landed, self._pending = self._pending, None
                landed.state, landed.latent, landed.frame = "landed", frame, self.frame_of(frame)
                self.entries.append(landed)
                self._starts.append(frame)
                self._kvs.append(landed.kv)
            kv = self._kvs[bisect_right(self._starts, frame) - 1]
        if landed is not None:
            self.on_change(landed)
        return kv

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
        """`[[seconds, prompt], ...]` as `cf generate` stores its schedule (`frame_offset`: frames before the stream)."""
        with self._lock:
            return [[round((p.frame + frame_offset) / fps, 4), p.prompt] for p in self.entries]

    def drop_pending(self) -> LivePrompt | None:
        """The video ended with a prompt still waiting: it never lands (`dropped`)."""
        with self._lock:
            p, self._pending = self._pending, None
        if p is not None:
            p.state = "dropped"
        return p

    @property
    def awaiting_frames(self) -> bool:
        """A prompt has landed and its first frame is not written yet."""
        with self._lock:
            return any(p.state == "landed" for p in self.entries[1:])

    @property
    def has_pending(self) -> bool:
        return self._pending is not None
