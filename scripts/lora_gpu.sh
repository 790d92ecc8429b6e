#!/usr/bin/env bash
# Issue #26 on a GPU, one device call per mode (random full-size weights, 81 frames 480×832): a random rank-32 LoRA on
# every linear of every DiT block (scripts/lora_gpu.py write); `cf bench` without and with it (merged, a LoRA costs
# nothing per frame); `cf live --measure-latency N --lora` (prompt switches, then N LoRA swaps: their cost); the LoRA
# applied unmerged against merged (scripts/lora_gpu.py unmerged). Run from the repository root, wheels installed.
#
#   scripts/lora_gpu.sh MODE      env: OUT (/tmp/lora-gpu), SWAPS (8), UNMERGED=0 (skip the unmerged comparison),
#                                 BENCH=0 (skip the two cf bench runs)
set -uo pipefail
export PYTHONUNBUFFERED=1
MODE=${1:-framewise}
OUT=${OUT:-/tmp/lora-gpu}
SWAPS=${SWAPS:-8}
export CF_HOME=${CF_HOME:-$OUT/cf-home}
TAG=$(basename "$MODE" .yaml)
mkdir -p "$OUT"
LORA=$OUT/r32.safetensors
[ -s "$LORA" ] || python3 scripts/lora_gpu.py write "$MODE" "$LORA" 32 || exit 1
step() {  # NAME SECONDS COMMAND...: its last stdout line kept as NAME.json
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" 2>"$OUT/$TAG-$name.err" | tail -1 >"$OUT/$TAG-$name.json"
  [ -s "$OUT/$TAG-$name.json" ] || { echo "$TAG $name failed:"; tail -5 "$OUT/$TAG-$name.err"; }
}
case $MODE in *.yaml) pick=(--preset "$MODE") ;; *) pick=(--mode "$MODE") ;; esac  # a tiny preset: a CPU check
bench=(python3 -m cfcli bench "${pick[@]}" --random-weights --frames 81 --repeat 2 --json)
if [ "${BENCH:-1}" = 1 ]; then
  step bench-plain 240 "${bench[@]}"
  step bench-lora 240 "${bench[@]}" --lora "$LORA"
fi
step live 300 python3 -m cfcli live "${pick[@]}" --random-weights --lora "$LORA" --measure-latency "$SWAPS" --json
[ "${UNMERGED:-1}" = 1 ] && step unmerged 300 python3 scripts/lora_gpu.py unmerged "$MODE" "$LORA"
python3 - "$OUT" "$TAG" <<'PY'
import json, sys
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
def read(name):
    p = out / f"{mode}-{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
plain, lora, live, unmerged = (read(n) for n in ("bench-plain", "bench-lora", "live", "unmerged"))
for label, b in (("no LoRA", plain), ("LoRA merged", lora)):
    if b:
        print(f"{mode} cf bench, {label}: {b['fps_end_to_end']:.1f} fps end to end, {b['fps_generation']:.1f} "
              f"generation, block p50 {b['block_ms_p50']:.1f} ms, peak {b['peak_vram_gib']} GiB ({b['fast_path']})")
if live and "lora_swaps" in live:
    s = live["lora_swaps"]
    print(f"{mode} cf live: {s['swaps']} swaps, rewriting {s['rewritten_bytes'] / 2**30:.2f} GiB: swap p50 "
          f"{s['swap_s']['p50']} s, max {s['swap_s']['max']} s; submitted → first frame p50 {s['made_s']['p50']} s, "
          f"max {s['made_s']['max']} s; refused {s['refused']}")
    print(f"  prompt switches p50 {live['latency_s']['p50']} s; block {live['block_s']} s; {live['realtime']}× real time")
    print(f"  swap_s all {s['swap_s']['all']}; made_s all {s['made_s']['all']}")
    row = lambda d: "/".join(f"{d[k]}" for k in d)
    print("  swaps queued/landed/swap/made: " + "  ".join(row(d) for d in s.get("detail", [])))
    print("  switches encoded/landed/step/made: " + "  ".join(row(d) for d in live.get("switch_detail", [])))
if unmerged:
    print(f"{mode} graphs, no compile: " + " · ".join(f"{k} {unmerged[k]['fps']} fps (load {unmerged[k]['load_s']} s)"
                                                     for k in ("no_lora", "merged", "unmerged"))
          + f" · unmerged/merged {unmerged['unmerged_of_merged']}")
PY
