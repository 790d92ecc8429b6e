"""`cf bench --cold`: what a user feels, i.e. `cf generate` run as fresh processes, phase by phase (handing their
jobs to a warm `cf serve` instead: `cfcli.serve.bench`).

Each run is `python -m cfcli generate PROMPT ... --json --quiet` in a new process, its video in a temp folder that is
removed afterwards. The compile caches (`TORCHINDUCTOR_CACHE_DIR`, `TRITON_CACHE_DIR`) point at a temp folder that is
empty for the first run and shared by the later ones, so run 1 pays for kernel compilation as on a new machine and the
rest find the kernels cached; so does the compiled code cfcli keeps (`CF_COMPILED_DIR`,
`cfcli.pipeline.compile_cache`). The prompt embedding goes to the usual cache under `$CF_HOME`: run 1 encodes it unless
an earlier command already did, later runs read it (each run says which). `CF_PROCESS_T0` hands the child its start
time, so the interpreter's start-up is counted (`cfcli.pipeline.phases`).
"""

import json
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

PROMPT = "a red fox running through fresh snow in a pine forest at dawn, cinematic"
SEED = 0
# The top-level phases, in the order they happen (their sum is at most the wall time).
STEPS = ("startup_s", "prepare_s", "text_s", "load_s", "configure_s", "generation_s", "tail_s")
SUMMARY_KEYS = (*STEPS, "first_block_s", "first_frame_s", "total_s", "wall_s", "fps_seen")


@dataclass
class ColdRun:
    run: int
    compile_cache: str  # "empty" | "warm"
    wall_s: float  # parent's view: process started to process gone
    frames: int
    phases: dict

    def to_json(self) -> dict:
        return {"run": self.run, "compile_cache": self.compile_cache, "wall_s": self.wall_s, "frames": self.frames,
                **self.phases, "fps_seen": self.frames / self.wall_s if self.wall_s > 0 else 0.0}


@dataclass
class ColdResult:
    runs: list[ColdRun]
    args: list[str] = field(default_factory=list)

    def warm_median(self) -> dict | None:
        """The median of each phase over the runs after the first (None with one run)."""
        warm = [r.to_json() for r in self.runs[1:]]
        if not warm:
            return None
        return {k: statistics.median(vals) for k in SUMMARY_KEYS
                if (vals := [w[k] for w in warm if w.get(k) is not None])}

    def to_json(self) -> dict:
        return {"command": ["cf", "generate", *self.args], "runs": [r.to_json() for r in self.runs],
                "summary": {"first": self.runs[0].to_json(), "warm_median": self.warm_median()}}


def generate_args(options: Sequence[str], out: Path) -> list[str]:
    """The `cf generate` arguments of one run: the bench's options, a fixed prompt and seed, JSON out."""
    return [PROMPT, *options, "--seed", str(SEED), "--out", str(out), "--overwrite", "--json", "--quiet"]


def run_once(args: list[str], env: dict) -> tuple[float, dict]:
    """(wall seconds, the JSON summary) of one fresh `cf generate` process."""
    start = time.perf_counter()
    env = env | {"CF_PROCESS_T0": repr(time.time())}
    done = subprocess.run([sys.executable, "-m", "cfcli", "generate", *args], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CfError(f"cf generate failed in a cold run (exit {done.returncode}): {' / '.join(tail)}",
                      "run the same cf generate command by hand to see the whole error")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise CfError("cf generate printed no JSON summary in a cold run")
    return wall, json.loads(lines[-1])


def run(options: Sequence[str], repeat: int, status: Callable[[str], None] = lambda m: None) -> ColdResult:
    """`repeat` fresh `cf generate` processes with `options` (preset, size, device, fast-path flags, ...)."""
    if repeat < 1:
        raise CfError(f"--repeat must be at least 1, got {repeat}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="cf-cold-") as tmp:
        caches = Path(tmp) / "compile-caches"
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
                            "TRITON_CACHE_DIR": str(caches / "triton"), "CF_COMPILED_DIR": str(caches / "compiled")}
        for i in range(repeat):
            status(f"fresh cf generate {i + 1} of {repeat}")
            args = generate_args(options, Path(tmp) / f"run-{i + 1}.mp4")
            wall, summary = run_once(args, env)
            runs.append(ColdRun(i + 1, "empty" if i == 0 else "warm", wall, summary["frames"], summary["phases"]))
            (Path(tmp) / f"run-{i + 1}.mp4").unlink(missing_ok=True)
    return ColdResult(runs, generate_args(options, Path("<temp>/run.mp4")))

