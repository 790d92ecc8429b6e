"""pipeline/sinks.py: the one generation loop and its sinks (the background writer, the held chunk, errors)."""

import threading
import time

import pytest
import torch

from cfcli.pipeline.sinks import Background, stream


class Recorder:
    def __init__(self, delay: float = 0.0, fail_at: int | None = None):
        self.frames, self.closed, self.aborted, self.delay, self.fail_at = [], False, False, delay, fail_at
        self.threads = set()

    def write(self, frames):
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail_at is not None and len(self.frames) == self.fail_at:
            raise OSError(28, "No space left on device")
        self.frames.append(frames)

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


class Chunk:
    def __init__(self, i: int, context: bool = False):
        self.latents, self.context = torch.zeros(1), context
        self.pixels = torch.full((1, 3, 2, 2), i, dtype=torch.uint8)

    def host_pixels(self):
        return self.pixels


def test_background_keeps_order_runs_off_the_loop_and_closes_after_the_last_write():
    inner = Recorder(delay=0.01)
    done = stream((Chunk(i) for i in range(6)), [Background(inner, depth=2)], 6)
    assert [int(f[0, 0, 0, 0]) for f in inner.frames] == list(range(6))
    assert inner.closed and not inner.aborted and done.frames == 6
    assert threading.get_ident() not in inner.threads


def test_a_background_write_error_reaches_the_loop_and_aborts_every_sink():
    inner, other = Recorder(fail_at=1), Recorder()
    sink = Background(inner, depth=1)

    def chunks():
        for i in range(50):
            time.sleep(0.005)  # the writer thread gets to fail before the loop ends
            yield Chunk(i)

    with pytest.raises(OSError):
        stream(chunks(), [other, sink], 50)
    assert inner.aborted and other.aborted and len(inner.frames) == 1


def test_a_signal_while_the_writer_drains_is_only_noted():
    """Closing waits for every queued chunk even when a stop comes meanwhile: the file is finished, then the run
    stops (`signals.finalising` around the join)."""
    import os
    import signal

    from cfcli.pipeline.signals import SIGNALS, stop_on_signals, stopped_by

    inner, old = Recorder(delay=0.05), {s: signal.getsignal(s) for s in SIGNALS}
    try:
        with stop_on_signals():
            sink = Background(inner, depth=8)
            for i in range(6):
                sink.write(Chunk(i).pixels)
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
            sink.close()  # a Stopped raised here would leave the thread writing a file being closed
            assert stopped_by() == signal.SIGTERM
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    assert len(inner.frames) == 6 and inner.closed and not inner.aborted


def test_a_none_from_the_source_writes_the_held_chunk_at_once():
    seen = []
    sink = Recorder()

    def chunks():
        yield Chunk(0)
        seen.append(len(sink.frames))  # chunk 0 is held: written only when the next one arrives
        yield None
        seen.append(len(sink.frames))  # the None had it written now
        yield Chunk(1)

    stream(chunks(), [sink], 2)
    assert seen == [0, 1] and len(sink.frames) == 2
