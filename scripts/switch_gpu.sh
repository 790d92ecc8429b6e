#!/usr/bin/env bash
# Issue #27 on a GPU, one device call: `cf live --measure-latency N` in both modes, switches landing at block starts
# (before) and between denoising steps (after), each switch's detail kept (encoded, landed, step, made). Random
# full-size weights (their video shows nothing to judge continuity by). Run from the repository root, wheels installed.
#
#   scripts/switch_gpu.sh [MODES...]     env: OUT (/tmp/switch-gpu), SWITCHES (10), ATS ("steps blocks")
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/switch-gpu}
SWITCHES=${SWITCHES:-10}
export CF_HOME=${CF_HOME:-$OUT/cf-home}
mkdir -p "$OUT"
MODES=("$@")
[ $# -eq 0 ] && MODES=(framewise chunkwise)
for at in ${ATS:-steps blocks}; do  # the default first: a call cut short still brings back what the targets are about
  for mode in "${MODES[@]}"; do
    timeout 200 python3 -m cfcli live --mode "$mode" --random-weights --switch-at "$at" --measure-latency "$SWITCHES" \
      --json 2>"$OUT/$mode-$at.err" | tail -1 >"$OUT/$mode-$at.json"
    [ -s "$OUT/$mode-$at.json" ] || { echo "$mode $at failed:"; tail -5 "$OUT/$mode-$at.err"; }
  done
done
python3 - "$OUT" "${MODES[@]}" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"{'mode':<10} {'lands at':<8} {'p50':>6} {'max':>6} {'encode':>7} {'block_s':>8} {'decode_s':>9} {'× real':>7}  "
      "mid-block")
for mode in sys.argv[2:]:
    for at in ("steps", "blocks"):
        try:
            r = json.loads((out / f"{mode}-{at}.json").read_text())
        except (OSError, ValueError):
            print(f"{mode:<10} {at:<8} (no result)")
            continue
        detail = r.get("switch_detail", [])
        mid = sum(1 for d in detail if d["step"]) if detail else 0
        print(f"{mode:<10} {at:<8} {r['latency_s']['p50']:>6} {r['latency_s']['max']:>6} {r['encode_s']:>7} "
              f"{r['block_s']:>8} {r['decode_s']:>9} {r['realtime']:>7}  {mid}/{len(detail)}")
        print("    encoded/landed/step/made: " + "  ".join(
            f"{d['encoded_s']}/{d['landed_s']}/{d['step']}/{d['made_s']}" for d in detail))
PY
