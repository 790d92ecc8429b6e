"""Where a live prompt switch's time goes, on a GPU: `python3 scripts/switch_trace.py MODE [N]` (MODE: framewise or
chunkwise; a tiny preset's .yaml runs it on the CPU, a dry run).

Runs `cf live --measure-latency N`'s measurement (random full-size weights, the default speed levers) with hooks that
stamp, for each switch, on one host clock (seconds from its submission): the text thread taking it (`job`), its
features and K/V enqueued (`kv`), handed over (`encoded`), landed (the sampler's lookup), the GPU done with what was
queued before it (`backlog_done`: an event recorded on the default stream at the landing), the block's x0 done (an
event recorded as its decode is queued), the first latent frame's pixels ready (`Chunk.ready`), and the viewers'
sink writing them (`made`). A poller thread turns each event into a host time (0.5 ms resolution). A diagnostic for
#27, not a test: it patches the live modules in its own process only. Env SWITCH_INTERVAL: Python's GIL switch
interval for the run (default 0.005 s).
"""

import json
import os
import sys
import threading
import time

import torch

import cfcli.live.schedule as schedule_mod
import cfcli.live.session as session_mod
import cfcli.pipeline.engine as engine_mod
from cfcli.cli.live import load
from cfcli.live.measure import measure
from cfcli.live.session import LiveConfig
from cfcli.session import Session

marks: list[dict] = []  # one per landing
pending: list[tuple[dict, str, torch.cuda.Event]] = []
lock = threading.Lock()


def watch(mark: dict, key: str, event: "torch.cuda.Event | None") -> None:
    if event is None:  # off the GPU (a dry run on a tiny preset)
        return
    with lock:
        pending.append((mark, key, event))


def poll() -> None:
    while True:
        with lock:
            for item in list(pending):
                mark, key, event = item
                if event.query():
                    mark[key] = time.perf_counter()
                    pending.remove(item)
        time.sleep(0.0005)


def event_now() -> "torch.cuda.Event | None":
    if not torch.cuda.is_available():
        return None
    e = torch.cuda.Event()
    e.record(torch.cuda.current_stream())
    return e


land = schedule_mod.LiveSchedule._land


def traced_land(self, p, frame, step):
    land(self, p, frame, step)
    mark = {"prompt": p, "landed": time.perf_counter(), "step": step, "latent": frame}
    marks.append(mark)
    watch(mark, "backlog_done", event_now())


encode = session_mod.LiveSession._encode


def traced_encode(self, p):
    p.trace_job = time.perf_counter()  # the text thread took the job
    encode(self, p)
    p.trace_kv = time.perf_counter()  # features and K/V enqueued (the handover's wait comes after)


aside = engine_mod.decode_aside


def traced_aside(decoder, latents, side, is_context, block_end):
    x0_done = event_now()  # on the default stream: the block's last step
    chunk = aside(decoder, latents, side, is_context, block_end)
    for mark in marks:
        if "taken" not in mark and not is_context:  # the first latent frame decoded after the landing
            mark["taken"] = True
            watch(mark, "x0", x0_done)
            watch(mark, "ready", chunk.ready)
    return chunk


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8
    if os.environ.get("SWITCH_INTERVAL"):  # a hypothesis to test: the GIL handed over late between the live threads
        sys.setswitchinterval(float(os.environ["SWITCH_INTERVAL"]))
    schedule_mod.LiveSchedule._land = traced_land
    session_mod.LiveSession._encode = traced_encode
    engine_mod.decode_aside = traced_aside
    threading.Thread(target=poll, daemon=True).start()
    session = Session(mode, device="cpu") if mode.endswith(".yaml") else Session(None, mode=mode, random_weights=True)
    engine, encoder = load(session, None, None)
    result = measure(engine, encoder, LiveConfig(), n)
    time.sleep(0.1)  # the poller's last events
    rows = []
    for mark in marks:
        p = mark["prompt"]
        row = {k: round(mark[k] - p.submitted, 4) if isinstance(mark.get(k), float) else None
               for k in ("landed", "backlog_done", "x0", "ready")}
        rows.append(row | {"job": round(p.trace_job - p.submitted, 4), "kv": round(p.trace_kv - p.submitted, 4),
                           "encoded": p.encoded_s, "made": p.made_s, "step": mark["step"], "latent": mark["latent"]})
    print(f"{mode}: block_s {result['block_s']} decode_s {result['decode_s']} p50 {result['latency_s']['p50']}")
    keys = ("job", "kv", "encoded", "landed", "backlog_done", "x0", "ready", "made", "step")
    print("  " + "  ".join(f"{k[:7]:<7}" for k in keys))
    for r in rows:
        print("  " + "  ".join(f"{r[k]!s:<7}" for k in keys))
    print(json.dumps({"mode": mode, "rows": rows, "result": result}), file=sys.stderr)


if __name__ == "__main__":
    main()
