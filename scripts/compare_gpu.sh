#!/usr/bin/env bash
# "No speed loss" on a GPU: `cf bench` of this tree against an older tree (and the official loop, when its harness
# and code are here), in one device call, alternating so that drift between runs hits both alike.
#
#   scripts/compare_gpu.sh OLD_TREE [MODES...]     (OLD_TREE: e.g. `git archive <commit> | tar -x -C .old`)
#   env: REPEAT (3), EXTRA (more bench options for both), OUT (results folder, default /tmp/compare)
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
OLD=$(cd "$1" && pwd); shift
NEW=$PWD
OUT=${OUT:-/tmp/compare}
mkdir -p "$OUT"
MODES=("${@:-framewise chunkwise}")
bench() {  # tree name mode
  (cd "$1" && PYTHONPATH="$1:${PYTHONPATH:-}" timeout 420 python3 -m cfcli bench --mode "$3" --random-weights \
     --repeat "${REPEAT:-3}" --json ${EXTRA:-} >"$OUT/$2-$3.json" 2>"$OUT/$2-$3.err") \
    || { echo "$2 $3 failed:"; tail -5 "$OUT/$2-$3.err"; }
}
for mode in ${MODES[@]}; do
  if [ -f scripts/official_bench.py ] && [ -d .official ]; then
    timeout 420 python3 scripts/official_bench.py --mode "$mode" --frames 81 --height 480 --width 832 --repeat 2 \
      >"$OUT/official-$mode.json" 2>"$OUT/official-$mode.err" || { echo "official $mode failed:"; tail -5 "$OUT/official-$mode.err"; }
  fi
  bench "$OLD" old "$mode"
  bench "$NEW" new "$mode"
done
python3 - "$OUT" ${MODES[@]} <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def load(name):
    f = out / f"{name}.json"
    try:
        return json.loads(f.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
print(f"{'mode':<10} {'run':<9} {'e2e fps':>8} {'DiT fps':>8} {'first s':>8} {'peak GiB':>9}  vs old (e2e / DiT)  levers")
official = {}
for mode in sys.argv[2:]:
    old = load(f"old-{mode}")
    for run in ("official", "old", "new"):
        r = load(f"{run}-{mode}")
        if r is None:
            continue
        if run == "official":  # scripts/official_bench.py: medians; its first frame comes with the last
            m = r.get("median") or {}
            e2e, dit, peak = m.get("e2e_fps"), m.get("dit_fps"), r.get("peak_gib")
            first = m.get("e2e_s")
        else:
            e2e, dit, first, peak = r["fps_end_to_end"], r["fps_generation"], r["first_frame_s"], r.get("peak_vram_gib")
        ratio = f"{e2e / old['fps_end_to_end']:.3f} / {dit / old['fps_generation']:.3f}" if old and e2e and dit else ""
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"
        print(f"{mode:<10} {run:<9} {fmt(e2e, '8.1f')} {fmt(dit, '8.1f')} {fmt(first, '8.3f')} {fmt(peak, '9.2f')}  "
              f"{ratio:<19} {r.get('levers', r.get('fast_path', ''))}")
PY
