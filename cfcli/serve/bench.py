"""`cf bench --served`: fresh `cf generate` clients whose jobs a warm `cf serve` makes — the wall time and the first
frame a user gets once the engine is resident (`cfcli.pipeline.cold` times them on their own)."""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cfcli.errors import CfError
from cfcli.pipeline.cold import generate_args, run_once
from cfcli.serve import registry


# Where a served job's time goes, from the job's start on the server (`cfcli.pipeline.phases`).
SERVER_PHASES = ("prepare_s", "text_s", "first_block_s", "generation_s", "tail_s", "first_frame_s", "total_s")


@dataclass
class ServedRun:
    run: int
    wall_s: float  # the client process: started to gone
    frames: int
    first_frame_s: float | None  # the client's first progress report: the first frame in the file, from its start
    phases: dict  # the server's phases of the job

    def to_json(self) -> dict:
        gen = self.phases.get("generation_s")
        return {"run": self.run, "wall_s": self.wall_s, "frames": self.frames, "first_frame_s": self.first_frame_s,
                "server_total_s": self.phases.get("total_s"), "generation_s": gen,
                "generation_fps": self.frames / gen if gen else None, "fps_seen": self.frames / self.wall_s,
                "server_phases": {k: self.phases.get(k) for k in SERVER_PHASES}}


@dataclass
class ServedResult:
    runs: list[ServedRun]
    server_start_s: float | None  # start-up of the server this bench started (None: one was running)
    args: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        runs = [r.to_json() for r in self.runs]
        return {"command": ["cf", "generate", *self.args], "server_start_s": self.server_start_s, "runs": runs,
                "summary": {k: statistics.median(v) for k in ("wall_s", "first_frame_s", "generation_fps", "fps_seen")
                            if (v := [r[k] for r in runs if r.get(k) is not None])}}


def run_served(generate: Sequence[str], serve: Sequence[str], repeat: int,
               status: Callable[[str], None] = lambda m: None) -> ServedResult:
    """`repeat` fresh `cf generate` clients with `generate` options, their jobs made by a `cf serve`: the running one,
    else one started with `serve` options (warmed up, then stopped again)."""
    if repeat < 1:
        raise CfError(f"--repeat must be at least 1, got {repeat}")
    running = registry.read()
    server, start_s = None, None
    if running is None or not registry.alive(running.pid):
        status("starting cf serve (loading, warming up)")
        server, start_s = start_server(serve)
    try:
        runs = []
        with tempfile.TemporaryDirectory(prefix="cf-served-") as tmp:
            for i in range(repeat):
                status(f"cf generate through cf serve, {i + 1} of {repeat}")
                out = Path(tmp) / f"run-{i + 1}.mp4"
                wall, summary = run_once(generate_args(generate, out), os.environ.copy())
                if summary.get("server") is None:
                    raise CfError("the cf generate of a served run ran in its own process",
                                  "see `cf serve`'s output; is another CF_HOME set?")
                phases = summary["phases"]
                runs.append(ServedRun(i + 1, wall, summary["frames"], phases.get("client", {}).get("first_frame_s"),
                                      phases))
                out.unlink(missing_ok=True)
    finally:
        if server is not None:
            stop_server(server)
    return ServedResult(runs, start_s, generate_args(generate, Path("<temp>/run.mp4")))


def start_server(options: Sequence[str], timeout: float = 900) -> tuple[subprocess.Popen, float]:
    """A `cf serve` with `options` on a free port, and its seconds until it took jobs (its entry written)."""
    start = time.perf_counter()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "cfcli", "serve", *options, "--port", "0"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    while (entry := registry.read()) is None or entry.pid != proc.pid:
        if proc.poll() is not None or time.perf_counter() - start > timeout:
            proc.kill()
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise CfError(f"cf serve did not start: {' / '.join(tail)}", "run `cf serve` by hand to see the whole error")
        time.sleep(0.1)
    return proc, time.perf_counter() - start


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
