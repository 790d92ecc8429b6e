#!/usr/bin/env bash
# The session layer on a GPU, one device call: the GPU tests, two jobs on one `cfcli.Session` (the second runs warm),
# `cf live` planned through the session (`--measure-latency`), then no speed loss against an older tree
# (`compare_gpu.sh`, the official loop beside).
#
#   scripts/session_gpu.sh OLD_TREE [MODES...]   env: OUT (results folder, default /tmp/session-gpu), CHECKS=0 (the
#                                                comparison alone, e.g. for a second mode in a second call)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/session-gpu}
mkdir -p "$OUT"
OLD=$1; shift

checks() {
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_engine.py tests/test_ops.py \
    tests/test_samplers.py tests/test_cache_protocol.py tests/test_memory_plan.py -k "not bfloat16_stays" 2>&1 \
    | tail -4 | tee "$OUT/tests.txt"
  timeout 80 python3 - <<'PY' 2>&1 | tee "$OUT/session.txt"
import json, time

import cfcli

with cfcli.Session(mode="framewise", random_weights=True) as s:
    runs = []
    for seed in (1, 2):
        t0, first, n = time.perf_counter(), None, 0
        for frames in s.stream("a fox running through snow", frames=81, seed=seed):
            first = first if first is not None else time.perf_counter() - t0
            n += frames.shape[0]
        wall = time.perf_counter() - t0
        runs.append({"seed": seed, "frames": n, "wall_s": round(wall, 3), "first_frame_s": round(first, 3),
                     "fps": round(n / wall, 1)})
    print(json.dumps({"plan": s.memory.describe() if s.memory else None, "engine_loads": s.engine_loads,
                      "levers": s.engine.levers(), "runs": runs}))
PY
  timeout 100 python3 -m cfcli live --mode framewise --random-weights --measure-latency 4 --max-seconds 20 --json \
    2>"$OUT/live.err" | tail -1 | tee "$OUT/live.json"
  tail -3 "$OUT/live.err"
}

[ "${CHECKS:-1}" = 0 ] || checks
OUT="$OUT" REPEAT=3 timeout 340 scripts/compare_gpu.sh "$OLD" "${@:-framewise}" 2>&1 | tee "$OUT/compare.txt"
