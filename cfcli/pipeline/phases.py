"""Where one `cf generate` process spends its time: named phases, timed from the start of the process.

The clock is `time.perf_counter()`, set against the process start. That start is, in order of preference:
`CF_PROCESS_T0` (a `time.time()` value the parent wrote just before starting us: `cf bench --cold` sets it, so the
interpreter's own start-up counts), else the start time the kernel records in `/proc/self/stat` (Linux, 10 ms
ticks), else the moment this module was imported. `clock` in the report says which.

The report's top-level phases follow one another, so their sum is at most `total_s`: `startup_s` (process start to
arguments parsed), `prepare_s` (torch imported, checks, outputs reserved), `text_s` (prompt encoding, the umT5 load
included when the prompt cache misses), `load_s` (DiT + VAE), `configure_s` (decoder, quantisation, fast-path set-up),
`generation_s` (the video's start to its last frame handed to the encoder: compilation and graph capture happen in
its first block, `first_block_s`) and `tail_s` (encoder flush, close, rename). `first_frame_s` counts from the
process start. A frame counts as written when it is handed to the file writer, whose encoder runs on a thread of
its own (`sinks.Background`): what the encoder has not caught up with by the last block is in `tail_s`.
"""

import os
import time
from contextlib import contextmanager
from pathlib import Path

from cfcli.hub.hints import human

_PERF0 = time.perf_counter()  # the import of this module: the last resort for the process start


def _proc_age() -> float | None:
    """Seconds since this process started, from /proc; None where there is no /proc."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, `starttime`, after the command name
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def process_start() -> tuple[float, str]:
    """(the perf_counter value at process start, where it came from: "parent", "proc" or "import")."""
    given = os.environ.get("CF_PROCESS_T0")
    try:
        t0 = float(given) if given else None
    except ValueError:
        t0 = None
    wall, perf = time.time(), time.perf_counter()
    if t0 is not None and 0 <= wall - t0 < 3600:  # a stale or future value (an inherited variable) is not ours
        return perf - (wall - t0), "parent"
    age = _proc_age()
    if age is not None:
        return time.perf_counter() - age, "proc"
    return _PERF0, "import"


class Phases:
    """A timing record: `span(name)` times a phase, `mark(name)` notes a moment (the first time only), `load(...)`
    times one model's load with its size. `video()` starts the per-video part again (a batch makes several)."""

    def __init__(self, t0: float | None = None):
        """`t0`: the perf_counter value to time from (`cf serve`: when it took the job), else the process start."""
        self.t0, self.clock = (t0, "job") if t0 is not None else process_start()
        self.spans: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self.loads: dict[str, dict] = {}
        self.facts: dict = {}

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, self.now())

    @contextmanager
    def span(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.spans[name] = self.spans.get(name, 0.0) + self.now() - start

    @contextmanager
    def load(self, name: str, path: Path):
        """Time loading `name` from `path`: seconds, bytes of the file and the read rate reached."""
        size = path.stat().st_size
        with self.span(f"load_{name}"):
            yield
        seconds = self.spans[f"load_{name}"]
        self.loads[name] = {"s": seconds, "bytes": size, "mb_s": size / 1e6 / seconds if seconds > 0 else None}

    def video(self) -> None:
        """Forget the marks of the previous video (the loads and start-up stay: they were paid once)."""
        for name in ("video_start", "first_frame", "last_frame"):
            self.marks.pop(name, None)

    def frame_written(self) -> None:
        """A frame went to the file's encoder: the first is the first frame, the latest the last so far."""
        self.mark("first_frame")
        self.marks["last_frame"] = self.now()

    def report(self, frames: int) -> dict:
        """Seconds per phase for the video just made (see the module docstring for what adds up)."""
        end, m, s = self.now(), self.marks, self.spans
        start, first, last = m.get("video_start", end), m.get("first_frame"), m.get("last_frame")
        ready = m.get("cli_ready")
        prepare = m["prepared"] - ready if ready is not None and "prepared" in m else None
        out = {"clock": self.clock, "startup_s": ready, "prepare_s": prepare, "text_s": s.get("text"),
               **self.facts, "loads": self.loads, "load_s": s.get("load_dit", 0.0) + s.get("load_vae", 0.0),
               "configure_s": s.get("configure"),
               "first_block_s": first - start if first is not None else None,
               "first_frame_s": first, "generation_s": (last if last is not None else end) - start,
               "tail_s": end - last if last is not None else None, "total_s": end}
        out["fps_seen"] = frames / end if end > 0 else 0.0
        return out


@contextmanager
def maybe_load(phases: "Phases | None", name: str, path: Path):
    """`phases.load(name, path)`, or nothing without a record."""
    if phases is None:
        yield
        return
    with phases.load(name, path):
        yield


@contextmanager
def maybe_span(phases: "Phases | None", name: str):
    """`phases.span(name)`, or nothing without `phases`."""
    if phases is None:
        yield
        return
    with phases.span(name):
        yield


def loading(what: str, path: Path) -> str:
    """The status line for a model about to load: what, how big, from where."""
    return f"loading {what} {human(path.stat().st_size)} from {path}"
