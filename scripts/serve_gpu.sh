#!/usr/bin/env bash
# Issue #23 on a GPU, one device call per mode: random full-size weights in the official layout (scripts/cold_gpu.sh
# WEIGHTS_ONLY=1), then `import torch` timed, the warm `cf bench` (the reference clip time), `cf bench --cold` (run 1 on
# empty compile caches, runs 2+ on warm ones, cfcli's compiled code included), the plain path's first run, `cf bench
# --served` (a `cf serve` started and warmed, fresh `cf generate` clients), and the official loop's first clip in its
# process. Ends with a table against the issue's targets. Run from the repository root, wheels installed.
#
#   scripts/serve_gpu.sh MODE        env: OUT (/tmp/serve-gpu), FRAMES (81), REPEAT (3), OFFICIAL=0 (skip the official
#                                    loop), PROBES=0 (skip the import timings), FLAGS (more options for every bench),
#                                    SERVED=0 (skip cf bench --served), NOCOMPILE=1 (fresh runs with graphs, no compile)
set -uo pipefail
export PYTHONUNBUFFERED=1
MODE=${1:-framewise}
OUT=${OUT:-/tmp/serve-gpu}
FRAMES=${FRAMES:-81}
REPEAT=${REPEAT:-3}
WEIGHTS=${WEIGHTS:-/tmp/cf-cold-weights}
export CF_HOME=${CF_HOME:-$OUT/cf-home}
mkdir -p "$OUT"
WEIGHTS_ONLY=1 WEIGHTS=$WEIGHTS scripts/cold_gpu.sh "$MODE" || exit 1
preset="$WEIGHTS/$MODE.yaml"
TIMEFORMAT=%R
[ -s "$OUT/import-torch.txt" ] || for i in 1 2; do { time python3 -c "import torch"; } 2>>"$OUT/import-torch.txt"; done
[ "${PROBES:-1}" = 1 ] && python3 - <<'PY' 2>&1 | tee "$OUT/imports.txt"  # what a fresh process pays beside `import torch` (configure's share)
import time
t = time.perf_counter()
def lap(what):
    global t
    now = time.perf_counter(); print(f"  {what}: {now - t:.2f}s"); t = now
import torch; lap("import torch")
torch.cuda.init(); torch.zeros(1, device="cuda"); lap("CUDA context")
import torch._dynamo; lap("import torch._dynamo")
import torch._inductor.compile_fx; lap("import torch._inductor.compile_fx")
import triton; lap("import triton")
import cfcli.pipeline.engine, cfcli.pipeline.fast; lap("import cfcli's engine and fast path")
PY
run() {  # NAME ARGS...: one cf bench, its JSON kept
  local name=$1; shift
  python3 -m cfcli bench --preset "$preset" --frames "$FRAMES" --json ${FLAGS:-} "$@" >"$OUT/$MODE-$name.json" \
    2>"$OUT/$MODE-$name.err" || { echo "$MODE $name failed:"; tail -5 "$OUT/$MODE-$name.err"; }
}
run warm --repeat "${WARM_REPEAT:-3}"
run cold --cold --repeat "$REPEAT" --compile  # compiled blocks asked for: auto leaves them off here
[ "${PLAIN:-1}" = 1 ] && run plain --cold --repeat 1 --no-compile --no-cuda-graphs
[ "${NOCOMPILE:-0}" = 1 ] && run nocompile --cold --repeat "$REPEAT" --no-compile
[ "${NOCOMPILE:-0}" = 1 ] && run warmgraphs --repeat 1 --no-compile
[ "${SERVED:-1}" = 1 ] && run served --served --repeat "$REPEAT"
if [ "${OFFICIAL:-1}" = 1 ] && [ -d .official ]; then
  python3 scripts/official_bench.py --mode "$MODE" --frames "$FRAMES" --repeat 1 >"$OUT/$MODE-official.json" \
    2>"$OUT/$MODE-official.err" || { echo "official $MODE failed:"; tail -5 "$OUT/$MODE-official.err"; }
fi
python3 - "$OUT" "$MODE" <<'PY'
import json, statistics, sys
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
read = lambda n: json.loads(p.read_text()) if (p := out / f"{mode}-{n}.json").is_file() and p.stat().st_size else None
torch_s = statistics.median(float(x) for x in (out / "import-torch.txt").read_text().split())  # the first mode's
warm, cold, plain, served, official, nocompile, warmgraphs = (
    read(n) for n in ("warm", "cold", "plain", "served", "official", "nocompile", "warmgraphs"))
clip_s = warm["frames"] / warm["fps_end_to_end"] if warm else None
print(f"{mode}: import torch {torch_s:.2f}s · warm cf bench {warm and warm['fps_end_to_end']:.1f} fps end to end, "
      f"clip {clip_s:.2f}s" if warm else f"{mode}: import torch {torch_s:.2f}s · warm bench missing")
if warmgraphs:
    print(f"  warm cf bench --no-compile (graphs): {warmgraphs['fps_end_to_end']:.1f} fps end to end, "
          f"{warmgraphs['fps_generation']:.1f} generation, warm-up {warmgraphs['warmup_s']:.2f}s")
keys = ("startup_s", "prepare_s", "text_s", "load_s", "configure_s", "first_block_s", "generation_s", "tail_s",
        "first_frame_s", "total_s", "wall_s")
print(f"  {'fresh process':<22}" + "".join(f"{k.removesuffix('_s')[:9]:>10}" for k in keys) + f"{'gen fps':>9}{'exit':>7}")
for label, rep in (("fast", cold), ("plain", plain), ("graphs", nocompile)):
    for r in (rep or {}).get("runs", []):
        gen = r["frames"] / r["generation_s"] if r.get("generation_s") else 0
        print(f"  {label} run {r['run']} ({r['compile_cache']:<5})    " + "".join(
            f"{r[k]:>10.2f}" if r.get(k) is not None else f"{'-':>10}" for k in keys) +
            f"{gen:>9.1f}{r['wall_s'] - r['total_s']:>7.2f}")
for r in (served or {}).get("runs", []):
    print(f"  served run {r['run']}: wall {r['wall_s']:.2f}s · first frame {r['first_frame_s']:.2f}s (client start "
          f"included) · generation {r['generation_fps']:.1f} fps · server {r['server_total_s']:.2f}s")
    print("    server: " + " · ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in r.get("server_phases", {}).items()
                                      if v is not None))
if served:
    print(f"  served: cf serve started in {served['server_start_s']:.1f}s (load + warm-up)")
if official:
    print(f"  official loop: first clip in its process {official.get('warmup_s', 0):.2f}s · warm "
          f"{official.get('fps_end_to_end', 0):.1f} fps")
if warm and cold and plain and served:
    w = cold["summary"]["warm_median"] or {}
    s = served["summary"]
    first = cold["runs"][0]
    ref_fps = warm["fps_end_to_end"]
    gen_fps = first["frames"] / w["generation_s"] if w.get("generation_s") else 0
    checks = {
        f"served wall {s['wall_s']:.2f} ≤ 1.3 × clip {1.3 * clip_s:.2f}": s["wall_s"] <= 1.3 * clip_s,
        f"served first frame {s['first_frame_s']:.2f} ≤ 0.5": s["first_frame_s"] <= 0.5,
        f"fresh warm wall {w.get('wall_s', 0):.2f} ≤ torch + 5 = {torch_s + 5:.2f}": w.get("wall_s", 1e9) <= torch_s + 5,
        f"fresh warm first frame {w.get('first_frame_s', 0):.2f} ≤ torch + 2 = {torch_s + 2:.2f}":
            w.get("first_frame_s", 1e9) <= torch_s + 2,
        f"fresh warm generation {gen_fps:.1f} ≥ 90 % of {ref_fps:.1f} fps": gen_fps >= 0.9 * ref_fps,
        f"fresh exit {w.get('wall_s', 0) - w.get('total_s', 0):.2f} ≤ 0.5 s after the summary":
            w.get("wall_s", 1e9) - w.get("total_s", 0) <= 0.5,
        f"first ever {first['wall_s'] - first['text_s']:.2f} ≤ 1.1 × plain {plain['runs'][0]['wall_s'] - plain['runs'][0]['text_s']:.2f} (text excluded)":
            first["wall_s"] - first["text_s"] <= 1.1 * (plain["runs"][0]["wall_s"] - plain["runs"][0]["text_s"])}
    for k, v in checks.items():
        print(f"  {'yes' if v else 'NO '}  {k}")
PY
