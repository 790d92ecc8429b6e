"""The live generation worker: one thread runs one video at a time through the shared loop, steered while it plays.

States: `idle` → `loading` (prompt features, picture or clip context) → `running` → `stopping` → `idle`.
Calls from the server (`start`, `stop`, `restart`, `prompt`, `record`, `set_loras`) never block: they leave the next
start in the worker's one slot (a restart replaces what is there, a stop empties it), hand a prompt to the text
thread, which encodes it and queues it on the run's `LiveSchedule` (it lands at the next denoising step of the block
in flight, or at the next block for a transition), or hand a LoRA change to the LoRA thread, which
checks it and queues it on the `LoraControl` (it lands at a block, as a prompt does: `cfcli.live.loras`). A
transition's next blend and its K/V are made on the blend thread while a block is made (`LiveSchedule.ahead`). The
text and blend threads run their CUDA work on a stream of their own (`cfcli.live.side`), beside the DiT's.

A start is planned as `cf generate` and `cf extend` plan theirs: a `VideoPlan` (a prompt, or a picture, for
`--max-seconds` or up to the position table) or an `ExtendPlan` (a clip: its context by `read_tail`, the recording
opening with the clip's own frames at the clip's own rate).

Each run is `Engine.generate` with the live schedule as its text, driven by `sinks.stream` (the loop `cf generate`
and `cf extend` use) into two sinks: the recording (complete) and the live stream (frames to the viewers, each of
which may drop frames). Generation runs at most `lead_s` of video ahead of real-time playback, so a new prompt
shows soon after it is typed; a waiting prompt cuts the wait short. Where cuts land between steps, the wait is after
each block's first step (`_idle`), so a cut typed in it lands at that block's next step; else between blocks.
"""

import contextlib
import itertools
import logging
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from cfcli.errors import CfError
from cfcli.live.loras import LoraChange, LoraControl
from cfcli.live.prepare import Prepared
from cfcli.live.protocol import encode_frame
from cfcli.live.recording import Recording
from cfcli.live.schedule import LivePrompt, LiveSchedule
from cfcli.live.side import SideStream
from cfcli.lora.spec import LoraSpec
from cfcli.pipeline.clip_reader import ClipInfo
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.extend import ExtendPlan
from cfcli.pipeline.files import metadata, run_facts
from cfcli.pipeline.outputs import free_name, slug
from cfcli.pipeline.plan import VideoPlan
from cfcli.pipeline.prompts import CUT, Transition
from cfcli.pipeline.samplers import sampler_kind
from cfcli.pipeline.sinks import Background, stream

log = logging.getLogger("cfcli.live")
STATUS_EVERY_S = 0.5


class Outlet(Protocol):
    """Where the worker reports (thread-safe): JSON messages and encoded frames for every viewer."""

    def message(self, msg: dict) -> None: ...

    def frame(self, data: bytes) -> None: ...

    def watching(self) -> bool: ...


@dataclass(frozen=True)
class LiveConfig:
    out_dir: Path = Path("outputs/live")
    codec: str = "h264"
    crf: int = 18
    lead_s: float = 1.0  # video generated ahead of real-time playback before the worker waits
    max_seconds: float | None = None  # default: the model's position-table limit
    jpeg_quality: int = 85
    lora_swaps: bool = True  # False where the engine is shared with other work (`cf serve`'s jobs): changes refused
    switch_at: str = "steps"  # where a cut lands: the next denoising step of the block in flight, or the next block


@dataclass
class StartRequest:
    prompt: str
    seed: int
    image: Path | None = None  # an upload the server checked (`check_image_input`), under a server-chosen path
    clip: ClipInfo | None = None  # an upload the server probed (`probe_clip`): it is not probed again
    record: bool = False


@dataclass
class Start:
    """A run's plan and the latents it primes the cache with (a picture's, or a clip's last frames)."""

    plan: VideoPlan | ExtendPlan
    latents: torch.Tensor | None = None

    @property
    def clip(self) -> ClipInfo | None:
        return self.plan.clip if isinstance(self.plan, ExtendPlan) else None

    @property
    def max_frames(self) -> int:
        """Frames streamed (a clip's own frames are recorded, not streamed)."""
        return self.plan.new_frames if self.clip is not None else self.plan.frames

    def frame_of(self, latent: int) -> int:
        """Streamed frame index made first by `latent`."""
        g = self.plan.preset.geometry
        return g.continuation_frames(latent - self.plan.context) if self.clip is not None else g.first_frame_of(latent)


@dataclass
class RunStats:
    session: int
    seed: int
    prompt: str
    max_frames: int
    started: float = field(default_factory=time.perf_counter)
    frames: int = 0
    busy_s: float = 0.0  # time spent inside the engine (not waiting for playback)
    idle_s: float = 0.0  # time the engine waited for playback inside a block (`LiveSession._idle`)
    block_s: list[float] = field(default_factory=list)
    t0: float | None = None  # playback clock: when frame 0 plays (moved on an underrun)
    underruns: int = 0
    record: bool = False
    finished: bool = False  # the length limit was reached

    def ahead_s(self, fps: float) -> float:
        """Video generated but not yet played on the real-time clock; an underrun restarts the clock."""
        if self.t0 is None:
            return 0.0
        ahead = self.frames / fps - (time.perf_counter() - self.t0)
        if ahead < 0:
            self.t0, self.underruns = time.perf_counter() - self.frames / fps, self.underruns + 1
            return 0.0
        return ahead


class LiveStream:
    """The sink that feeds the viewers: frames to the JPEG thread, prompt timeline and status on the way."""

    def __init__(self, session: "LiveSession", stats: RunStats, schedule: LiveSchedule):
        self.session, self.stats, self.schedule = session, stats, schedule
        self._last_status = 0.0

    def write(self, frames: torch.Tensor) -> None:
        s = self.stats
        if s.t0 is None:
            s.t0 = time.perf_counter()
        if self.session.events.watching():
            for i, f in enumerate(frames):
                self.session.jpeg_queue.put((s.session, s.frames + i, f))
        s.frames += frames.shape[0]
        for p in [*self.schedule.frames_written(s.frames), *self.session.loras.frames_written(s.frames)]:
            self.session.events.message(p.as_message(self.session.fps))
        if time.perf_counter() - self._last_status > STATUS_EVERY_S:
            self._last_status = time.perf_counter()
            self.session.publish_status()

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class LiveSession:
    """`hold`: what each video runs inside, yielding the (engine, encoder) to run on: `cf serve` holds the GPU there
    (its jobs wait meanwhile) and gives back its resident session's parts, loaded again if a job switched them.
    Without it every video runs on `engine` and `encoder`."""

    def __init__(self, engine: Engine, encoder, config: LiveConfig, events: Outlet, hold=None):
        self.engine, self.encoder, self.config, self.events = engine, encoder, config, events
        self.hold = hold or (lambda: contextlib.nullcontext((self.engine, self.encoder)))
        self.preset, self.fps = engine.preset, float(engine.preset.fps)
        self.state, self.stats, self.schedule = "idle", None, None
        self.recordings: dict[str, Path] = {}  # name -> file, the only files the server hands out
        self.latencies: list[float] = []
        self._next: StartRequest | None = None  # the one start waiting for the worker: restarts replace it
        self._quit = False
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._nudge = threading.Event()  # set when a prompt, LoRA change or stop is queued: it ends a pacing wait
        self._ids, self._sessions = itertools.count(1), itertools.count(1)
        self._text = ThreadPoolExecutor(1, thread_name_prefix="cf-live-text")
        self._lora_checks = ThreadPoolExecutor(1, thread_name_prefix="cf-live-lora")  # files read, not encoding
        self._blends = ThreadPoolExecutor(1, thread_name_prefix="cf-live-blend")  # not behind a prompt's encoding
        self._side = SideStream(engine.device)  # the text and blend threads' CUDA stream (`cfcli.live.side`)
        self._prepared = Prepared(self._text, self._prepare, lambda m: self.events.message(m))
        self.loras = LoraControl(lambda: self.engine, on_change=lambda c: self.events.message(c.as_message(self.fps)))
        self.jpeg_queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name="cf-live-generate", daemon=True),
                         threading.Thread(target=self._jpegs, name="cf-live-jpeg", daemon=True)]
        self.last_request: StartRequest | None = None

    # --- calls from the server (non-blocking) -------------------------------------------------------------------

    def begin(self) -> "LiveSession":
        for t in self._threads:
            t.start()
        return self

    def warm_up(self, latent_frames: int | None = None) -> None:
        """Run the first `latent_frames` (default: past the attention window) of a live-length video and throw them
        away: compilation and CUDA-graph capture for the live cache happen here, not under the first prompt.
        Off the GPU there is nothing to warm."""
        from cfcli.pipeline.samplers import attention_window

        if self.engine.device.type != "cuda":
            return

        total = self.plan(StartRequest("warm-up", 0)).generated
        n = latent_frames or attention_window(self.preset) + 2 * self.preset.block_frames
        features = self.encoder.encode(["warm-up"])[0]
        self.warm_threads(features)
        kv = self.engine.text_kv(features)
        chunks = self.engine.generate(kv, total, 0)
        try:
            for chunk in chunks:
                chunk.host_pixels()
                n -= 0 if chunk.context else chunk.latents.shape[0]
                if n <= 0:
                    break
        finally:
            chunks.close()

    def warm_threads(self, features) -> None:
        """The first CUDA work of the threads that encode prompts and make blends, done now rather than under the
        first switch: umT5 run once past the prompt cache on the text thread and once through it, a K/V made on each."""
        def warm(encode: bool) -> None:
            with self._side.on():
                if encode:
                    self.encoder.warm()
                    self.encoder.encode(["warm-up"])  # the prompt cache's path too (`warm_up` stored it)
                self.engine.text_kv(features)

        self._text.submit(warm, True).result()
        self._blends.submit(warm, False).result()
        self._side.handover()

    def start(self, req: StartRequest) -> None:
        with self._wake:
            if self.state != "idle" or self._next is not None:
                raise CfError("a video is already running", "stop it first, or restart")
            self._next = req
            self._wake.notify()

    def restart(self, req: StartRequest) -> None:
        """Stop the video and start `req`: it replaces a start still waiting (the latest restart wins)."""
        with self._wake:
            self._next = req
            self._stop.set()
            self._nudge.set()
            self._wake.notify()

    def stop(self) -> None:
        """Stop the video, and drop a start still waiting."""
        with self._wake:
            self._next = None
            self._stop.set()
            self._nudge.set()

    def record(self, on: bool) -> None:
        if self.stats is None:
            raise CfError("nothing is running", "start a video; its recording covers it from the start")
        self.stats.record = on
        self.events.message({"type": "ack", "for": "record", "state": "applied", "on": on,
                             "session": self.stats.session, "frame": self.stats.frames})
        self.publish_status()

    def prompt(self, text: str, transition: Transition = CUT) -> tuple[LivePrompt, dict]:
        """Queue a prompt switch: it is encoded on the text thread and lands at the next denoising step of the block
        in flight, or with a transition at the next block to start (then blends in over `transition.blocks` blocks).
        Returns the prompt and its `submitted` message (taken before the text thread can move it on)."""
        schedule = self.schedule
        if self.state != "running" or schedule is None:
            raise CfError("nothing is running", "start a video first; its opening prompt is the start message's")
        p = LivePrompt(next(self._ids), text.strip(), time.perf_counter(), transition=transition)
        reply = p.as_message(self.fps)
        self._text.submit(self._encode_and_queue, p, schedule)
        return p, reply

    def prepare(self, texts: list[str]) -> dict:
        """Encode prompts ahead into the prompt cache (`cfcli.live.prepare`): firing one later runs no umT5. Returns
        the received ack; each prompt gets an applied ack (`cached`: false where the cache cannot be written)."""
        return self._prepared.add(texts)

    def set_loras(self, asked: list[LoraSpec]) -> tuple[LoraChange, dict]:
        """Queue a change of the LoRAs (the whole list; the preset's own stay): checked on the LoRA thread, it lands at
        the next block to start, or when the next video starts if none plays. Refused at once where the weights
        cannot be swapped in place. Returns the change and its `submitted` message."""
        if (why := self.lora_refusal()) is not None:
            raise why
        change = LoraChange(next(self._ids), tuple(asked), time.perf_counter())
        reply = change.as_message(self.fps)
        self._lora_checks.submit(self._check_loras, change)
        return change, reply

    def lora_refusal(self) -> CfError | None:
        """Why this live session cannot change LoRAs, or None: it never loads the models again mid-performance, so
        the engine must swap them in place."""
        if not self.config.lora_swaps:
            return CfError("this live page cannot change LoRAs: its models are shared with cf serve's jobs",
                           "run cf live to change LoRAs while playing, or start cf serve with --lora FILE:SCALE")
        if (why := self.engine.remerge_refusal) is not None:
            return CfError(f"the LoRAs cannot be swapped while playing: {why}; cf live does not load the models "
                           "again mid-performance",
                           "start cf live again with the LoRAs you want (--lora FILE:SCALE), or with a memory plan "
                           "that keeps every DiT block on the GPU (a larger --max-vram)")
        return None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the run (its recording is closed and kept if it was on) and the threads."""
        with self._wake:
            self._next, self._quit = None, True
            self._stop.set()
            self._nudge.set()
            self._wake.notify()
        self._threads[0].join(timeout)
        self.jpeg_queue.put(None)
        self._threads[1].join(timeout)
        self._text.shutdown(wait=False, cancel_futures=True)
        self._lora_checks.shutdown(wait=False, cancel_futures=True)
        self._blends.shutdown(wait=False, cancel_futures=True)

    # --- reporting -----------------------------------------------------------------------------------------------

    def status(self) -> dict:
        s, dev = self.stats, self.engine.device
        gen_fps = s.frames / s.busy_s if s and s.busy_s > 0 else None
        return {"type": "status", "state": self.state, "session": s.session if s else None,
                "seed": s.seed if s else None, "frames": s.frames if s else 0,
                "max_frames": s.max_frames if s else None, "fps": self.fps,
                "gen_fps": round(gen_fps, 2) if gen_fps else None,
                "realtime": round(gen_fps / self.fps, 3) if gen_fps else None,
                "ahead_s": round(s.ahead_s(self.fps), 3) if s else 0.0, "underruns": s.underruns if s else 0,
                "latency_s": self.latencies[-1] if self.latencies else None,
                "block_s": round(sum(s.block_s[-8:]) / len(s.block_s[-8:]), 4) if s and s.block_s else None,
                "recording": bool(s and s.record), "loras": self.loras.merged(),
                "gpu_mem_gib": round(torch.cuda.memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None}

    def publish_status(self) -> None:
        self.events.message(self.status())

    def _set_state(self, state: str) -> None:
        self.state = state
        self.publish_status()

    # --- the threads ---------------------------------------------------------------------------------------------

    def _on_device(self):
        """A new thread's current CUDA device is 0: side streams and graph pools must be made on the engine's."""
        dev = self.engine.device
        return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()

    def _work(self) -> None:
        with self._on_device():
            self._serve_commands()

    def _serve_commands(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._next is not None or self._quit)
                if self._quit:
                    return
                req, self._next = self._next, None
                self._stop.clear()  # under the lock: a restart from now on stops this run
                self.state = "loading"
            try:
                with self.hold() as (self.engine, self.encoder):
                    self._run(req)
            except CfError as exc:
                self.events.message({"type": "error", "message": exc.message, "hint": exc.hint})
            except Exception as exc:  # noqa: BLE001 - the server must outlive a failed run
                log.exception("live run failed")
                self.events.message({"type": "error", "message": f"generation failed: {exc}".splitlines()[0]})
            finally:
                self.schedule, self.state = None, "idle"
                self.jpeg_queue.put(self.status())  # after the run's last frames and messages

    def _jpegs(self) -> None:
        while (item := self.jpeg_queue.get()) is not None:
            if isinstance(item, dict):  # a message that must follow the frames before it
                self.events.message(item)
                continue
            session, index, rgb = item
            if self.jpeg_queue.qsize() > 4 * self.fps:  # far behind: these frames would be dropped anyway
                continue
            self.events.frame(encode_frame(session, index, rgb, self.config.jpeg_quality))

    def _encode(self, p: LivePrompt) -> None:
        """`p`'s features and K/V, tagged with the weights' version read first (a swap meanwhile makes it stale)."""
        p.features, p.kv_version = self.encoder.encode([p.prompt])[0], self.loras.version
        p.kv = self.loras.text_kv(p.features)

    def _check_loras(self, change: LoraChange) -> None:
        try:
            with self._on_device():
                self.loras.check(change)
            self._nudge.set()
        except Exception as exc:  # noqa: BLE001 - the thread must outlive a failed check
            log.exception("LoRA check failed")
            self.events.message({"type": "error", "message": f"could not check the LoRAs: {exc}".splitlines()[0]})

    def _ahead(self, job) -> None:
        """Run a schedule's job (a transition's next blend and its K/V) on the blend thread, while a block is made."""
        self._blends.submit(self._blend_job, job)

    def _blend_job(self, job) -> None:
        try:
            with self._side.on(follow=True):  # a blend of what the last block showed, made moments ago
                job()
        except Exception:  # noqa: BLE001 - the block then makes its blend itself
            log.exception("making a blend ahead failed")

    def _prepare(self, text: str) -> bool:
        if not self.encoder.is_cached(text):  # a queue sent again (a reload, a new claim) costs a stat a prompt
            with self._side.on():
                self.encoder.encode([text])
                self._side.handover()
        return self.encoder.is_cached(text)

    def _encode_and_queue(self, p: LivePrompt, schedule: LiveSchedule) -> None:
        try:
            with self._side.on(follow=bool(p.transition.blocks)):  # a first blend reads what the last block showed
                self._encode(p)
                schedule.submit(p)  # which makes a transition's first blend and its K/V (handed over there)
            self._nudge.set()
        except Exception as exc:  # noqa: BLE001
            log.exception("prompt encoding failed")
            self.events.message({"type": "error", "message": f"could not encode the prompt: {exc}"})
            return
        self.events.message(p.as_message(self.fps))

    def _run(self, req: StartRequest) -> None:
        self.last_request = req
        self._set_state("loading")
        session = next(self._sessions)
        opening = LivePrompt(next(self._ids), req.prompt.strip(), time.perf_counter())
        start = Start(self.plan(req))
        self.loras.begin(start.frame_of, self.preset.block_frames)  # a change asked for while idle: from frame 0
        self._encode(opening)
        start.latents = self._context_latents(req, start)
        stats = RunStats(session, req.seed, opening.prompt, start.max_frames, record=req.record)
        schedule = LiveSchedule(opening, start.plan.context, start.frame_of,
                                on_change=lambda p: self.events.message(p.as_message(self.fps)), weights=self.loras,
                                block_frames=self.preset.block_frames, ahead=self._ahead,
                                handover=self._side.handover,
                                by_step=self.config.switch_at == "steps")
        recording = self._recording(req, session, start)
        self.stats, self.schedule = stats, schedule
        self._set_state("running")
        self.events.message({"type": "started", "session": session, "seed": req.seed, "prompt": opening.prompt,
                             "max_frames": stats.max_frames, "fps": self.fps,
                             "block": start.plan.context // self.preset.block_frames})
        log.info("live: started %r seed %d", opening.prompt, req.seed)
        # step_sync: the loop stays near the GPU, so a prompt queued mid-block lands at that block's next step
        idle = (lambda: self._idle(stats, schedule)) if self._waits_in_blocks() else None
        chunks = self.engine.generate(schedule, start.plan.generated, req.seed, start.latents,
                                      step_sync=schedule.by_step, idle=idle)
        # Viewers first; the recording encodes on its own thread, so neither holds up the next block.
        stream(self._paced(chunks, stats, schedule, idle is None),
               [LiveStream(self, stats, schedule), Background(recording)],
               stats.max_frames, write_context=start.clip is None, frames_before=recording.frames)
        self.state = "stopping"
        self._finish(recording, stats, schedule, start, "limit" if stats.finished else "stopped")
        self.latencies += [p.made_s for p in schedule.entries[1:] if p.made_s is not None]

    def _paced(self, chunks, stats: RunStats, schedule: LiveSchedule, wait: bool = True):
        """The engine's chunks, pulled no faster than playback (+ lead) unless a prompt waits (`wait`; else the
        engine waits inside its blocks, `_idle`); ends on stop."""
        try:
            block_busy = 0.0
            while not self._stop.is_set():
                t, idle = time.perf_counter(), stats.idle_s
                chunk = next(chunks, None)
                busy = time.perf_counter() - t - (stats.idle_s - idle)
                stats.busy_s, block_busy = stats.busy_s + busy, block_busy + busy
                if chunk is None:
                    stats.finished = True
                    return
                if chunk.block_end and not chunk.context:
                    stats.block_s.append(block_busy)
                    block_busy = 0.0
                yield chunk
                if schedule.awaiting_frames or self._should_wait(stats, schedule):
                    # `stream` writes the chunk it holds now: a new prompt's first frames do not wait for the next
                    # block, and nothing is left to overlap with a wait
                    yield None
                while wait and self._should_wait(stats, schedule):
                    self._wait_a_little()
        finally:
            chunks.close()

    def _waits_in_blocks(self) -> bool:
        """Whether playback pacing waits inside each block, after its first step (`_idle`), rather than between
        blocks: where cuts land between steps and blocks have steps to land at."""
        from cfcli.pipeline.samplers import sampler_kind

        return (self.config.switch_at == "steps" and sampler_kind(self.preset).steps_between
                and len(self.engine.plan.steps) > 1)

    def _idle(self, stats: RunStats, schedule: LiveSchedule) -> bool:
        """After a block's first step: wait here for playback, so that a cut arriving in the wait lands at the
        block's next step (after step 0 the block's input is still mostly noise: with the shift-5 schedule, σ =
        0.9375). Not while a landed prompt or LoRA waits for its first frames (they are in this block). True: a
        change that lands only at a block start (a transition, a LoRA swap) is waiting, and the block starts again
        under it (`LiveSchedule.reopen`)."""
        t = time.perf_counter()
        while self._should_wait(stats, schedule) and not schedule.awaiting_frames:
            self._wait_a_little()
        stats.idle_s += time.perf_counter() - t
        return schedule.reopen()

    def _wait_a_little(self) -> None:
        self._nudge.wait(0.01)  # playback is checked every 10 ms; a queued switch ends it at once
        self._nudge.clear()  # (`_should_wait` is read again after: a nudge meanwhile is not lost)

    def _should_wait(self, stats: RunStats, schedule: LiveSchedule) -> bool:
        return (stats.ahead_s(self.fps) > self.config.lead_s and not schedule.has_pending
                and not self._stop.is_set())

    def plan(self, req: StartRequest) -> VideoPlan | ExtendPlan:
        """A start planned as `cf generate` / `cf extend` plan theirs: `--max-seconds` long (at the clip's rate for a
        clip, as `cf extend --seconds`), or as long as the position table allows."""
        from cfcli.pipeline.extend import context_latents, plan_extend
        from cfcli.pipeline.plan import plan_video

        p, g, bf, most_s = self.preset, self.preset.geometry, self.preset.block_frames, self.config.max_seconds
        if req.clip is not None:
            if not sampler_kind(p).starts_from_frames:
                raise CfError(f"{p.name} cannot continue clips", "run cf live --mode framewise or chunkwise")
            most = (g.max_latent_frames - context_latents(p, req.clip.frames, None)) // bf * bf
            new = g.continuation_frames(most)
            if most_s is not None:
                new = min(new, max(1, round(most_s * (req.clip.fps or p.fps))))
            return plan_extend(p, req.clip, req.prompt, new_frames=new)
        given = 0 if req.image is None else 1
        frames = g.video_frames_for((g.max_latent_frames - given) // bf * bf + given)
        if most_s is not None:
            frames = min(frames, round(most_s * p.fps) + 1)
        return plan_video(p, frames, image=req.image, prompt=req.prompt, image_checked=True)

    def _context_latents(self, req: StartRequest, start: Start) -> torch.Tensor | None:
        """The picture, or the clip's last frames (read by seeking, as `cf extend` reads them), VAE-encoded."""
        from cfcli.pipeline.clip_reader import read_tail
        from cfcli.pipeline.media import fit_frames, load_image, to_model_range

        p = self.preset
        if req.image is not None:
            return self.engine.encode_video(load_image(req.image, p.width, p.height)[:, None])
        if start.clip is not None:
            tail = fit_frames(read_tail(start.clip.path, start.plan.context_frames, start.clip), p.width, p.height)
            return self.engine.encode_video(to_model_range(tail).permute(1, 0, 2, 3))
        return None

    def _recording(self, req: StartRequest, session: int, start: Start) -> Recording:
        """The recording, at the plan's rate (a clip's own); a clip's frames open it, streamed from the file."""
        from cfcli.pipeline.clip_reader import iter_frames
        from cfcli.pipeline.media import fit_frames

        p, c, clip = self.preset, self.config, start.clip
        name = f"live-{slug(req.prompt, 40)}-{req.seed}-{session}"
        opening = metadata(req.prompt.strip(), req.seed, p, 0, self._file_fps(start),
                           **self._facts(start, self.loras.opening))
        del opening["frames"]  # known at the end; a file cut short (SIGKILL) still says how it was made
        rec = Recording(c.out_dir, name, start.plan.fps, p.width, p.height, c.codec, c.crf, opening)
        if clip is not None:
            try:
                for batch in iter_frames(clip.path, rotation=clip.rotation):  # never held whole
                    rec.write(fit_frames(batch, p.width, p.height))
            except BaseException:
                rec.abort()
                raise
        return rec

    def _facts(self, start: Start, loras: tuple, image: Path | None = None) -> dict:
        """What decides the recording beyond prompt and seed (`cf info` remakes it from them): the run's length
        (`max_frames`: its noise and cache were drawn for all of it), device, dtype, size, decoder, codec, picture,
        the LoRAs it opened with (changes while playing: `lora_schedule`)."""
        e, c = self.engine, self.config
        decoder = "taehv" if "taehv" in e.levers() else "wan"
        quantize = "fp8" if "fp8" in e.levers() else None
        return {"live": True, "max_frames": start.max_frames} | run_facts(self.preset, e.device, e.dtype, c.codec,
                                                                           c.crf, decoder, quantize, image,
                                                                           loras=loras)

    @staticmethod
    def _keep_picture(req: StartRequest | None, recording: Recording) -> Path | None:
        """The uploaded start picture, copied beside the recording (`NAME.start.EXT`): uploads are temporary, and a
        remake needs it. None without one (or when it cannot be copied: the remake then says it lacks it)."""
        if req is None or req.image is None:
            return None
        try:
            from PIL import Image

            with Image.open(req.image) as img:  # an upload has no name of its own: its format gives the suffix
                suffix = req.image.suffix or f".{(img.format or 'img').lower()}"
            final = recording.target.final
            target = free_name(final.with_name(f"{final.stem}.start{suffix}"))
            shutil.copyfile(req.image, target)
        except OSError:
            log.warning("could not keep the start picture beside %s", recording.target.final)
            return None
        return target

    @staticmethod
    def _file_fps(start: Start) -> float:
        return round(float(start.plan.fps), 3)

    def _finish(self, recording: Recording, stats: RunStats, schedule: LiveSchedule, start: Start,
                reason: str) -> None:
        from cfcli.pipeline.extend import source_facts

        if (dropped := schedule.drop_pending()) is not None:
            self.jpeg_queue.put(dropped.as_message(self.fps))
        self.jpeg_queue.put({"type": "ended", "session": stats.session, "reason": reason, "frames": stats.frames,
                             "block": schedule.last_block})
        ended = "stopped after" if reason == "stopped" else "reached the length limit at"
        log.info("live: %s %.1f s", ended, stats.frames / self.fps)
        if not stats.record or stats.frames == 0:
            recording.abort()
            if stats.frames:
                log.info("live: recording off: not kept")
            return
        fps, clip = self._file_fps(start), start.clip
        extra = self._facts(start, self.loras.opening, self._keep_picture(self.last_request, recording))
        offset = 0 if clip is None else clip.frames
        if len(schedule.entries) > 1:
            extra["prompt_schedule"] = schedule.as_metadata(fps, offset)
        if len(self.loras.timeline) > 1:
            extra["lora_schedule"] = self.loras.as_metadata(fps, offset)
        if clip is not None:
            extra |= {"context_frames": start.plan.context_frames} | source_facts(clip, fps, self.preset)
        path, note = recording.save(metadata(stats.prompt, stats.seed, self.preset, recording.frames, fps, **extra))
        if note:
            self.jpeg_queue.put({"type": "error", "message": note})
        self.recordings[path.name] = path
        log.info("live: saved recording %s (%.1f s)", path, recording.frames / fps)
        self.jpeg_queue.put({"type": "recording", "session": stats.session, "name": path.name,
                             "url": f"/recordings/{path.name}", "frames": recording.frames,
                             "seconds": round(recording.frames / fps, 3)})
