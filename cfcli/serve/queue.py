"""`cf serve`'s jobs: queued as they come, run one at a time on a worker thread that holds the GPU for each.

A job reports through a `ServerView`: every call of the job's `View` (`cfcli.jobs.view`) becomes an event, handed to
the client's stream by `post`. A cancel (the client's Ctrl-C, or the client gone) takes a queued job out of the queue;
a running one stops at its next report — inside the video that is at the next written chunk, so the frames so far
are kept as a local Ctrl-C keeps them.
"""

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cfcli.errors import CfError, explain

log = logging.getLogger("cfcli.serve")


@dataclass
class Job:
    kind: str  # "generate" | "extend"
    job: object  # a `cfcli.jobs` job (GenerateJob, ExtendJob)
    env: dict  # the client's settings variables (`cfcli.config.client_environment`)
    quiet: bool
    post: Callable[[dict], None]  # an event to the client
    id: int = 0
    state: str = "queued"  # queued → running → done
    signum: int = 0  # the signal the client was stopped with (0: none)
    queued_at: float = field(default_factory=time.perf_counter)

    def describe(self) -> str:
        what = getattr(self.job, "prompt", None) if self.kind == "generate" else str(getattr(self.job, "clip", ""))
        return f"job {self.id} ({self.kind} {what!r})" if what else f"job {self.id} ({self.kind})"


class ServerView:
    """The `View` of a job on the server: each call an event for its client."""

    def __init__(self, job: Job):
        self.job, self.quiet, self._raised = job, job.quiet, False

    def line(self, markup: str) -> None:
        self._check()
        self.job.post({"type": "line", "markup": markup})

    def progress_start(self, fps: float) -> None:
        self.job.post({"type": "progress_start", "fps": fps})

    def progress(self, made: int, goal: int, elapsed: float, mem_gib: float | None) -> None:
        self.job.post({"type": "progress", "made": made, "goal": goal, "elapsed": elapsed, "mem_gib": mem_gib})
        self._check()

    def progress_end(self) -> None:
        self.job.post({"type": "progress_end"})

    def summary(self, fields: dict, phases: dict | None = None) -> None:
        self.job.post({"type": "summary", "fields": fields, "phases": phases})

    def stopped(self) -> int:
        return self.job.signum

    def _check(self) -> None:
        """A cancelled job stops here, once, as a Ctrl-C stops a local one (the writing loop keeps the frames)."""
        if self.job.signum and not self._raised:
            from cfcli.pipeline.signals import Stopped

            self._raised = True
            raise Stopped(self.job.signum)


class JobQueue:
    """Jobs in order; `run(job)` (given) runs one, with the GPU held, and returns its exit status."""

    def __init__(self, run: Callable[[Job, ServerView], int]):
        self.run = run
        self.waiting: deque[Job] = deque()
        self.running: Job | None = None
        self.done = 0
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._quit = False
        self._thread = threading.Thread(target=self._work, name="cf-serve-jobs", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._quit:
                raise CfError("cf serve is stopping", "run the job again once it is back, or with --no-server")
            job.id = next(self._ids)
            ahead = len(self.waiting) + (self.running is not None)
            self.waiting.append(job)
            job.post({"type": "queued", "job": job.id, "ahead": ahead})
            log.info("%s queued (%d ahead)", job.describe(), ahead)
            self._cond.notify()

    def cancel(self, job_id: int, signum: int) -> bool:
        """Stop a job: out of the queue if it waits, at its next report if it runs. False if there is no such job."""
        with self._cond:
            job = next((j for j in [self.running, *self.waiting] if j is not None and j.id == job_id), None)
            if job is None:
                return False
            job.signum = job.signum or signum
            if job in self.waiting:
                self.waiting.remove(job)
                finish(job, stopped_before_start(job))
            log.info("%s cancelled by its client", job.describe())
            return True

    def status(self) -> dict:
        with self._cond:
            return {"running": self.running.describe() if self.running else None,
                    "waiting": [j.describe() for j in self.waiting], "done": self.done}

    def stop(self, signum: int) -> None:
        """Cancel every job (the running one keeps its frames so far) and end the worker."""
        with self._cond:
            self._quit = True
            for job in list(self.waiting):
                job.signum = signum
                finish(job, stopped_before_start(job))
            self.waiting.clear()
            if self.running is not None:
                self.running.signum = self.running.signum or signum
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.waiting or self._quit)
                if not self.waiting:
                    return
                job = self.running = self.waiting.popleft()
                job.state = "running"
            log.info("%s started after %.1f s in the queue", job.describe(), time.perf_counter() - job.queued_at)
            start = time.monotonic()
            code = run_safely(self.run, job)
            with self._cond:
                self.running, self.done = None, self.done + 1
            finish(job, code)
            log.info("%s finished in %.1f s (exit %d)", job.describe(), time.monotonic() - start, code)


def run_safely(run, job: Job) -> int:
    """The job's exit status; what it raised becomes what a local run would have shown."""
    view = ServerView(job)
    try:
        return run(job, view)
    except KeyboardInterrupt:  # cancelled outside the writing loop (that keeps a partial and says so itself)
        job.post({"type": "line", "markup": "[yellow]stopped[/]"})
        return 128 + (job.signum or 2)
    except Exception as exc:  # noqa: BLE001 - the server outlives a failed job
        known = explain(exc)
        if known is None:
            log.exception("%s failed", job.describe())
            known = CfError(f"the job failed on cf serve: {exc}".splitlines()[0], "see cf serve's terminal for the "
                            "traceback; run with --no-server to see it here")
        job.post({"type": "error", "message": known.message, "hint": known.hint})
        return 1


def stopped_before_start(job: Job) -> int:
    job.post({"type": "line", "markup": "[yellow]stopped[/]"})
    return 128 + job.signum


def finish(job: Job, code: int) -> None:
    job.state = "done"
    job.post({"type": "exit", "code": code})
