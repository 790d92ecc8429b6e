"""One loop, many sinks: the engine's decoded chunks go to every front end through the same three verbs.

A sink takes uint8 host frames [n, 3, H, W] in order (`write`), is told when the video is finished or was
interrupted and keeps what it has (`close`), or that the run failed and it must leave nothing behind (`abort`).
The file writer, the live stream and the live recorder are all sinks; `stream` drives them and knows none of them.
"""

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from cfcli.pipeline.signals import finalising


class Sink(Protocol):
    def write(self, frames: Tensor) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Background:
    """A sink whose writes run on a thread of its own, so that a slow encoder never holds up the loop (or the frames
    of the other sinks). At most `depth` chunks wait; `close`/`abort` wait for the ones queued, then pass on."""

    def __init__(self, sink: Sink, depth: int = 16):
        self.sink, self.error = sink, None
        self._queue: queue.Queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._drain, name="sink-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (frames := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self.sink.write(frames)
                except BaseException as exc:  # noqa: BLE001 - raised again on the loop's thread
                    self.error = exc

    def _stop(self) -> None:
        with finalising():  # a signal must not leave the thread writing a file that is being closed or removed
            if self._thread.is_alive():
                self._queue.put(None)
                self._thread.join()

    def write(self, frames: Tensor) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(frames)

    def close(self) -> None:
        self._stop()
        if self.error is not None:
            raise self.error
        self.sink.close()

    def abort(self) -> None:
        self._stop()
        self.sink.abort()


@dataclass
class Progress:
    frames_done: int  # frames handed to the sinks so far (context frames included when they are written)
    frames_total: int
    elapsed: float
    first_frame_s: float | None
    frames_before: int = 0  # frames the sinks held before this pass (copied, not generated): progress counts past them


@dataclass
class Streamed:
    """What one pass of `stream` did: frames written, time to the first one, wall time, and the latents kept."""

    frames: int
    first_frame_s: float | None
    elapsed: float
    interrupted: bool
    latents: list[Tensor]


def stream(chunks: Iterable, sinks: Sequence[Sink], total: int,
           on_progress: Callable[[Progress], None] = lambda p: None, write_context: bool = True,
           keep_latents: bool = False, frames_before: int = 0) -> Streamed:
    """Hand each decoded chunk's pixels to every sink as it arrives and report progress.

    Context chunks (given latents) are written only with `write_context`: an I2V picture is the video's first frame,
    the context of an extended clip is already in the file. `frames_before` counts frames the sinks already hold.
    Each chunk is written one chunk late, so the GPU already has the next block queued while the host waits on this
    one's pixels; a source that is about to wait (live playback pacing) yields None to have the held chunk written
    now. Ctrl-C (any KeyboardInterrupt, e.g. `signals.Stopped`) closes the sinks so the frames so far are kept; any
    other error aborts them and re-raises.
    """
    latents, start, first, interrupted, writing = [], time.perf_counter(), None, False, False
    done_frames = frames_before

    def write(chunk) -> None:
        nonlocal first, writing, done_frames
        writing = True
        pixels = chunk.host_pixels()
        for sink in sinks:
            sink.write(pixels)
        writing = False
        done_frames += pixels.shape[0]
        now = time.perf_counter() - start
        first = first if first is not None else now
        on_progress(Progress(done_frames, total, now, first, frames_before))

    pending = None  # written one block late: the GPU already has the next block queued while we wait on this one
    try:
        for chunk in chunks:
            if chunk is None:  # the source is about to wait (live pacing): nothing to overlap, write what we hold
                if pending is not None:
                    write(pending)
                pending = None
                continue
            if keep_latents:  # otherwise a long video need not keep its latents on the GPU
                latents.append(chunk.latents)
            done, pending = pending, (chunk if write_context or not chunk.context else None)
            if done is not None:
                write(done)
        if pending is not None:
            write(pending)
    except KeyboardInterrupt:
        interrupted = True
        if pending is not None and not writing:  # the last finished block is decoded already: keep it
            write(pending)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    close_all(sinks)
    return Streamed(done_frames, first, time.perf_counter() - start, interrupted, latents)


def close_all(sinks: Sequence[Sink]) -> None:
    """Close every sink; when one fails (a full disk while flushing), it and those not yet closed are aborted."""
    for i, sink in enumerate(sinks):
        try:
            sink.close()
        except BaseException:
            for rest in sinks[i:]:
                rest.abort()
            raise
