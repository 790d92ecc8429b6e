"""Live LoRA swaps: the LoRAs of a playing video changed from the page or the API, landing at a block like a prompt.

A `loras` message sets the whole list (the preset's own LoRAs stay, as with `Session.set_loras`). It is checked on its
own thread — each file found on this machine and read against the DiT (`cfcli.pipeline.loras.adapters_for`), its
sha256 taken for the recording — and a bad one is refused with the reason before anything changes. A checked change
waits here; the generation thread takes it when the next block starts (`LiveSchedule.at` calls `land`), never
mid-block, and swaps the DiT's weights in place (`Engine.remerge`), so compiled code and CUDA graphs stay valid; the
weights as loaded that the swap starts from are copied to the host on the check thread (`Engine.keep_for`).

The prompts' cross-attention K/V are made by the DiT's own weights (its text embedding and each block's
`cross_attn.k` / `.v`, which a LoRA may change), so each swap bumps `version`: the schedule makes again, from the
prompt's features, any K/V made before it (`LiveSchedule.at`).

A change asked for while no video plays lands when the next one starts, from its first frame.

States: submitted → queued (checked) → landed (weights swapped) → shown (first frame made under it); or refused (a
bad file; or the swap failed and the previous LoRAs were put back), superseded (a later change came before it landed).
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cfcli.errors import CfError
from cfcli.lora.spec import LoraSpec
from cfcli.pipeline.engine import Engine

log = logging.getLogger("cfcli.live")


@dataclass
class LoraChange:
    """One `loras` message and what became of it; `frame` counts the streamed video frames."""

    id: int
    asked: tuple[LoraSpec, ...]  # as the client gave them (the preset's own LoRAs are not among them)
    submitted: float  # time.perf_counter() when the client's message arrived
    state: str = "submitted"
    adapters: tuple = field(default=(), repr=False)  # checked: the preset's LoRAs, then those asked
    latent: int | None = None  # first latent frame generated with it
    block: int | None = None  # the block it landed at (latent // block frames, as a prompt's)
    frame: int | None = None
    made_s: float | None = None  # submitted → first frame made with it
    swap_s: float | None = None  # the weights' swap, on the generation thread (it holds up that block)
    queued_s: float | None = None  # submitted → checked and queued
    landed_s: float | None = None  # submitted → swapped in
    message: str | None = None  # why it was refused
    hint: str | None = None

    def as_message(self, fps: float) -> dict:
        seconds = None if self.frame is None else round(self.frame / fps, 4)
        msg = {"type": "loras", "id": self.id, "loras": [{"file": s.source, "scale": s.scale} for s in self.asked],
               "state": self.state, "latent": self.latent, "block": self.block, "frame": self.frame,
               "seconds": seconds, "made_s": self.made_s, "swap_s": self.swap_s}
        return msg | ({"message": self.message, "hint": self.hint} if self.state == "refused" else {})


@dataclass(frozen=True)
class Landing:
    """One entry of a run's LoRA timeline: `adapters` merged from latent frame `latent` (streamed `frame`) on."""

    latent: int
    frame: int
    adapters: tuple


class LoraControl:
    """The LoRAs of a live engine: a change checked and waiting, swapped in at a block, and the run's timeline.

    `engine()`: the engine the videos run on now. Thread-safe: the check thread queues, the generation thread lands.
    """

    def __init__(self, engine: Callable[[], Engine], on_change: Callable[[LoraChange], None] = lambda c: None):
        self.engine, self.on_change = engine, on_change
        self.version = 0  # swaps so far: K/V made under an older version are stale
        self.swapped: torch.cuda.Event | None = None  # the last swap's end on the default stream (`text_kv`)
        self.timeline: list[Landing] = []
        self.changes: list[LoraChange] = []  # those landed in the run in progress (`frames_written`)
        self._pending: LoraChange | None = None
        self._frame_of: Callable[[int], int] = lambda latent: latent
        self._block_frames = 1
        self._lock = threading.Lock()

    # --- the check thread ----------------------------------------------------------------------------------------

    def check(self, change: LoraChange) -> None:
        """Find and read the files (a CfError refuses the change, nothing else happens), then queue it."""
        from cfcli.pipeline.loras import adapters_for

        engine = self.engine()
        try:
            change.adapters = adapters_for(engine.preset, change.asked)
            for a in change.adapters:
                a.sha256  # noqa: B018 - hashed here, not on the generation thread when the recording is saved
        except CfError as exc:
            self._refuse(change, exc.message, exc.hint)
            return
        if engine.device.type == "cuda":  # the files' tensors, ready for copies that do not wait on the host
            for a in change.adapters:
                a.lora.pin()
        engine.keep_for(change.adapters)  # the weights the swap starts from, copied here rather than when it lands
        with self._lock:
            old, self._pending = self._pending, change
            change.state, change.queued_s = "queued", round(time.perf_counter() - change.submitted, 4)
        if old is not None:
            old.state = "superseded"
            self.on_change(old)
        self.on_change(change)

    # --- the generation thread ------------------------------------------------------------------------------------

    def begin(self, frame_of: Callable[[int], int], block_frames: int = 1) -> None:
        """A video starts: a change that waited while none played lands now, at its first frame; the timeline opens
        with the LoRAs merged. `block_frames` numbers the blocks changes land at."""
        self._frame_of, self.changes, self.timeline = frame_of, [], []
        self._block_frames = block_frames
        self._land(0, 0)
        if not self.timeline:
            self.timeline.append(Landing(0, 0, self.engine().loras))

    def land(self, latent: int) -> None:
        """The block starting at `latent` is next: swap in the change waiting, if one is (between blocks)."""
        self._land(latent, self._frame_of(latent))

    def _land(self, latent: int, frame: int) -> None:
        with self._lock:
            change, self._pending = self._pending, None
        if change is None:
            return
        engine, before = self.engine(), self.engine().loras
        t = time.perf_counter()
        try:
            engine.remerge(change.adapters)
        except Exception as exc:  # noqa: BLE001 - the video goes on with the LoRAs it had
            log.exception("live LoRA swap failed")
            engine.remerge(before)  # each weight is rebuilt from its loaded value: this undoes a partial swap
            self._swapped(engine)
            self.version += 1
            self._refuse(change, f"the LoRAs could not be swapped: {exc}".splitlines()[0],
                         "the video goes on with the LoRAs it had")
            return
        self._swapped(engine)
        self.version += 1  # after the swap: K/V made while it ran are stale too
        now = time.perf_counter()
        change.state, change.swap_s, change.landed_s = "landed", round(now - t, 4), round(now - change.submitted, 4)
        change.latent, change.block, change.frame = latent, latent // self._block_frames, frame
        self.timeline.append(Landing(latent, change.frame, change.adapters))
        self.changes.append(change)
        self.on_change(change)

    def _swapped(self, engine: Engine) -> None:
        """Mark where the swap ends on the default stream, before `version` says it happened."""
        if engine.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(engine.device))
            self.swapped = event

    def text_kv(self, features: Tensor) -> Tensor:
        """A prompt's cross-attention K/V under the weights merged now (on the calling thread's stream, after the
        last swap: a side stream does not see the default stream's order of its own)."""
        engine = self.engine()
        if (swapped := self.swapped) is not None:
            torch.cuda.current_stream(engine.device).wait_event(swapped)
        return engine.text_kv(features)

    # --- what the run reports ---------------------------------------------------------------------------------

    def frames_written(self, frames: int) -> list[LoraChange]:
        """Mark the changes whose first frame is among the first `frames` streamed frames as shown."""
        now, shown = time.perf_counter(), []
        for c in self.changes:
            if c.state == "landed" and c.frame < frames:
                c.state, c.made_s = "shown", round(now - c.submitted, 4)
                shown.append(c)
        return shown

    @property
    def awaiting_frames(self) -> bool:
        return any(c.state == "landed" for c in self.changes)

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    @property
    def opening(self) -> tuple:
        """The LoRAs the run in progress started with."""
        return self.timeline[0].adapters if self.timeline else self.engine().loras

    def as_metadata(self, fps: float, frame_offset: int = 0) -> list[dict]:
        """`[{"seconds", "latent", "loras": [facts]}, ...]`, the first entry the opening LoRAs (`frame_offset`: frames
        before the stream, a clip's)."""
        return [{"seconds": round((e.frame + frame_offset) / fps, 4), "latent": e.latent,
                 "loras": [a.facts() for a in e.adapters]} for e in self.timeline]

    def merged(self) -> list[dict]:
        """The LoRAs merged now, for the page: file, name, scale, and whether the preset lists it."""
        return [{"file": a.spec.source, "name": a.path.name, "scale": a.spec.scale, "preset": a.preset}
                for a in self.engine().loras]

    def _refuse(self, change: LoraChange, message: str, hint: str | None) -> None:
        change.state, change.message, change.hint = "refused", message, hint
        self.on_change(change)
