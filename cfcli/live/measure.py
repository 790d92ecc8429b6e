"""Live latency, measured in-process (no server, no browser): `cf live --measure-latency N [--json]`.

A live session plays at real time (as the page would) while N prompt switches are submitted at random moments (each
two to three block cycles after the last one showed, `cycle_s`: a uniformly random phase of the cycle once the
generator's pacing has settled again); for each, the time from submission to the first frame made
under it. Beside it, with the device synchronised: one block's DiT time, one block's decode time, and unpaced
generation speed (frames/s with decoding). With `--lora`, then
N LoRA changes at random moments, alternating between none of the given LoRAs and all of them: for each, the swap
(the time it holds up a block) and submission to the first frame made under it.
"""

import itertools
import random
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from cfcli.live.session import LiveConfig, LiveSession, StartRequest
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.sinks import stream

PROMPTS = ("a fox running through a snowy forest at dawn", "the fox leaps into an icy river",
           "a red kite soaring over green hills", "neon city street at night in the rain",
           "waves crashing on a rocky shore at sunset", "a paper boat drifting down a gutter stream")
WAIT_S = 120.0


class Collect:
    """An `Outlet` that keeps messages and counts frames (the JPEG encoding still runs, as for a viewer)."""

    def __init__(self):
        self.messages, self.frames, self.changed = [], 0, threading.Condition()

    def message(self, msg: dict) -> None:
        with self.changed:
            self.messages.append(msg)
            self.changed.notify_all()

    def frame(self, data: bytes) -> None:
        self.frames += 1

    def watching(self) -> bool:
        return True

    def wait(self, test, timeout: float = WAIT_S) -> bool:
        with self.changed:
            return self.changed.wait_for(test, timeout)


def measure(engine: Engine, encoder, config: LiveConfig, switches: int, seed: int = 0, blocks: int = 6) -> dict:
    events = Collect()
    with tempfile.TemporaryDirectory() as tmp:
        session = LiveSession(engine, encoder, replace(config, out_dir=Path(tmp), max_seconds=None), events)
        timings = component_timings(engine, session, seed, blocks)  # the warm-up too
        session.begin()
        try:
            latencies, encoded, detail = switch_latencies(session, events, switches, seed, timings["block_s"])
            swaps = lora_swaps(session, events, switches, seed, timings["block_s"]) if given(engine) else None
        finally:
            session.stop()
            session.shutdown()
    p = engine.preset
    return {"preset": p.name, "mode": p.mode, "device": str(engine.device),
            "text_device": str(encoder.text_device), "switches": len(latencies),
            "latency_s": {"p50": percentile50(latencies), "max": max(latencies, default=None),
                          "all": latencies}, "switch_detail": detail,
            "encode_s": percentile50(encoded), **timings,
            "realtime": round(timings["frames_per_s"] / p.fps, 3)} | ({"lora_swaps": swaps} if swaps else {})


def percentile50(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def switch_latencies(session: LiveSession, events: Collect, n: int, seed: int, block_s: float):
    """Submit `n` prompts at random moments into a real-time live session; (made latencies, encode times)."""
    rng = random.Random(seed)
    session.start(StartRequest(PROMPTS[0], seed))
    events.wait(lambda: session.stats is not None and session.stats.frames > 0)
    prompts, period = [], cycle_s(session, block_s)
    for i in range(n):
        time.sleep(moment(rng, period))
        if session.state != "running":
            break
        prompts.append(session.prompt(PROMPTS[(i + 1) % len(PROMPTS)])[0])
        events.wait(lambda: prompts[-1].state in ("shown", "superseded") or session.state != "running")
    shown = [p for p in prompts if p.made_s is not None]
    return [p.made_s for p in shown], [p.encoded_s for p in shown], [
        {"encoded_s": p.encoded_s, "landed_s": p.landed_s, "step": p.step, "made_s": p.made_s} for p in shown]


def cycle_s(session: LiveSession, block_s: float) -> float:
    """How often a block starts while a video plays: its playback time when generation is ahead of real time (the
    generator then waits), else its generation time. A cut that ends a wait puts the generator further ahead, so the
    wait after it is longer: a moment drawn within one cycle of a switch showing falls in that wait nearly always.
    Drawn uniformly from the third cycle after it, when blocks start once a cycle again, it falls at a random phase:
    mid-block or in the wait, as a performer's would."""
    p = session.preset
    return max(p.block_frames * p.geometry.time_stride / p.fps, block_s)


def moment(rng: random.Random, period: float) -> float:
    """Seconds from the last change showing to the next: a random phase of the block cycle (`cycle_s`)."""
    return rng.uniform(2 * period, 3 * period)


def given(engine: Engine) -> tuple:
    """The LoRAs given on the command line (the preset's own are not swapped)."""
    return tuple(a.spec for a in engine.loras if not a.preset)


def lora_swaps(session: LiveSession, events: Collect, n: int, seed: int, block_s: float) -> dict:
    """Change the LoRAs `n` times at random moments of the running video: none of the given ones, then all, and so
    on. Each change's swap time and submission → first frame latency, and what a swap rewrites."""
    rng, asked, changes, period = random.Random(seed + 1), given(session.engine), [], cycle_s(session, block_s)
    for i in range(n):
        time.sleep(moment(rng, period))
        if session.state != "running":
            break
        changes.append(session.set_loras([] if i % 2 == 0 else list(asked))[0])
        events.wait(lambda: changes[-1].state in ("shown", "superseded", "refused") or session.state != "running")
    shown = [c for c in changes if c.made_s is not None]
    swap, made = [c.swap_s for c in shown], [c.made_s for c in shown]
    params = dict(session.engine.dit.named_parameters()) | dict(session.engine.dit.named_buffers())
    rewritten = sum(params[k].numel() * params[k].element_size() for k in session.engine.rewritten)
    return {"swaps": len(shown), "refused": [c.message for c in changes if c.state == "refused"],
            "swap_s": {"p50": percentile50(swap), "max": max(swap, default=None), "all": swap},
            "made_s": {"p50": percentile50(made), "max": max(made, default=None), "all": made},
            "detail": [{"queued_s": c.queued_s, "landed_s": c.landed_s, "swap_s": c.swap_s, "made_s": c.made_s}
                       for c in shown],
            "rewritten_bytes": rewritten}


def synced(engine: Engine, fn) -> float:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    start = time.perf_counter()
    fn()
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - start


class Null:
    def write(self, frames) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def component_timings(engine: Engine, session: LiveSession, seed: int, blocks: int = 6) -> dict:
    """Mean DiT time per block, decode time per block, and frames/s of an unpaced run with decoding, on the
    live session's cache layout (warmed up first)."""
    p = engine.preset
    session.warm_up()
    kv = engine.text_kv(session.encoder.encode([PROMPTS[0]])[0])
    total = session.plan(StartRequest(PROMPTS[0], seed)).generated
    latents = blocks * p.block_frames

    def first_blocks(decode: bool):
        chunks = engine.generate(kv, total, seed, decode=decode)
        if not decode:
            return list(take(chunks, blocks))
        return take(chunks, latents)  # decoded blocks come one latent frame at a time

    dit = synced(engine, lambda: first_blocks(False)) / blocks
    with torch.inference_mode():
        h, w = engine.latent_hw
        x = torch.randn(1, latents, engine.dit.cfg.in_dim, h, w, dtype=engine.dtype, device=engine.device)
        dec = engine.decoder.stream_decoder()
        dec.decode(x[:, :p.block_frames])  # the first block decodes 1 + 4(n − 1) frames: keep it out
        decode = [synced(engine, lambda i=i: dec.decode(x[:, i:i + p.block_frames]))
                  for i in range(p.block_frames, latents, p.block_frames)]
    done = stream(first_blocks(True), [Null()], 0)
    return {"block_s": round(dit, 4), "decode_s": round(statistics.median(decode), 4) if decode else None,
            "frames_per_s": round(done.frames / done.elapsed, 2)}


def take(chunks, n: int):
    """The first `n` chunks; then the engine's generator is closed (its video is abandoned)."""
    try:
        yield from itertools.islice(chunks, n)
    finally:
        chunks.close()
