"""The session `cf serve` keeps loaded, and the one lock on its GPU.

Jobs name only the session options their user gave (`cfcli.cli.jobs.given_engine`); the rest are the server's own
(`defaults`: what `cf serve` was started with). A job whose options resolve to the session already loaded runs on it;
one that asks for another preset, size, device, dtype, speed lever or memory budget switches the server to a session
of its own — said on the client and in the server's log — and the live page switches back when it next plays.
"""

import logging
import threading
from contextlib import contextmanager

log = logging.getLogger("cfcli.serve")
PICKS = ("preset", "mode", "steps")  # one of them given: the job picks the preset, none of the server's picks apply


def same_engine(a, b) -> bool:
    """Whether two sessions would load and plan the same engine (a resident one: `compile` left to auto compiles)."""
    return (a.preset, a.device, a.dtype, a.speed.options(), a.max_vram, a.low_vram, a.random_weights, a.loras) == \
        (b.preset, b.device, b.dtype, b.speed.options(), b.max_vram, b.low_vram, b.random_weights, b.loras)


def describe(session) -> str:
    p = session.preset
    budget = f", --max-vram {session.max_vram:g}" if session.max_vram else ""
    budget += ", --low-vram" if session.low_vram else ""
    budget += "".join(f", LoRA {a.path.name}:{a.spec.scale:g}" for a in session.loras)
    return f"{p.name} {p.width}×{p.height} on {session.device}, {str(session.dtype).removeprefix('torch.')}{budget}"


class Resident:
    """The loaded session; `gpu` is held by whatever runs on it (a job, a live video), one at a time."""

    def __init__(self, defaults: dict, random_weights: bool = False, live_seconds: float | None = None,
                 text_device: str | None = None):
        self.defaults, self.random_weights = defaults, random_weights
        self.live_seconds, self.text_device = live_seconds, text_device
        self.gpu = threading.Lock()
        self.session = None
        self.switches = 0

    def new_session(self, given: dict, status=lambda m: None, phases=None):
        """A session (nothing loaded) for a job's `given` options over the server's defaults."""
        from cfcli.session import Session

        base = {k: v for k, v in self.defaults.items() if not (k in PICKS and any(g in given for g in PICKS))}
        return Session(**(base | given), random_weights=self.random_weights, status=status, phases=phases)

    def open(self, status, phases, **given):
        """The session to run a job on (`given`: its session options), switched to when it differs; call with `gpu`
        held."""
        candidate = self.new_session(given, status, phases)
        if self.session is not None and same_engine(candidate, self.session):
            return self.session.attach(status, phases)
        if self.session is not None:
            line = f"cf serve switches from {describe(self.session)} to {describe(candidate)}: loading the models"
            log.info("%s", line)
            status(line)
            self.session.close()
            self.switches += 1
        self.session = candidate
        return candidate

    def start(self, status=lambda m: None) -> None:
        """Open the server's own session and load it (umT5 kept for the live page) before the first client comes."""
        self.session = self.new_session({}, status)
        self.session.open_live(self.live_seconds, self.text_device)

    @contextmanager
    def live(self):
        """The GPU held for one live video, and its (engine, encoder): the server's own session, loaded again if a job
        switched it."""
        with self.gpu:
            session = self.open(lambda m: log.info("%s", m), None)
            yield session.open_live(self.live_seconds, self.text_device)

    def warm_up(self, frames: int | None = None) -> float:
        """One video of `frames` (default: the preset's) made and thrown away: compilation and the CUDA graphs of that
        length happen here, not in the first job. Its seconds."""
        import time

        session = self.session
        start = time.perf_counter()
        with self.gpu:
            for _ in session.stream("warm-up", frames=frames or session.preset.frames, seed=0):
                pass
        return time.perf_counter() - start

    def run(self, job, view) -> int:
        """Run a queued job (`cfcli.serve.queue.Job`) with the GPU held, its settings read as its client reads them;
        its exit status."""
        from cfcli.config import environment
        from cfcli.jobs import extend, generate
        from cfcli.jobs.view import status
        from cfcli.pipeline.phases import Phases

        phases = Phases(t0=job.queued_at)  # the job's clock starts when the server took it
        module = generate if job.kind == "generate" else extend
        with environment(job.env), self.gpu, self.on_device():
            return module.run(job.job, view, lambda **given: self.open(status(view), phases, **given), phases)

    def on_device(self):
        """A new thread's current CUDA device is 0: graphs and side streams must be made on the session's."""
        import contextlib

        import torch

        dev = self.session.device if self.session is not None else None
        return torch.cuda.device(dev) if dev is not None and dev.type == "cuda" else contextlib.nullcontext()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
