#!/usr/bin/env bash
# The official loop (scripts/official_bench.py) and `cf bench` in one call, one process each, per mode; then a table
# of medians with cfcli's speed-up over the official loop (docs/official-harness.md). Run it from the repository root
# with the wheels installed and PYTHONPATH set (the device command in that doc).
#
#   scripts/official_gpu.sh [MODES...]   (default: framewise chunkwise)
#   env: OUT (results: $OUT on the device machine, else /tmp/official), FRAMES (81), REPEAT (official runs, 2),
#        CF_REPEAT (cf bench runs, 3), OFFICIAL_FLAGS (more options for official_bench.py, e.g. --tiny),
#        CF_PRESET (a preset path with {mode} in it, e.g. tests/fixtures/tiny-{mode}.yaml; default: --mode MODE),
#        CF_FLAGS (more options for cf bench), CF=0 (the official loop alone)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/official}
FRAMES=${FRAMES:-81}
MODES=("${@:-framewise chunkwise}")
mkdir -p "$OUT"
for mode in ${MODES[@]}; do
  # shellcheck disable=SC2086
  python3 scripts/official_bench.py --mode "$mode" --frames "$FRAMES" --repeat "${REPEAT:-2}" ${OFFICIAL_FLAGS:-} \
    >"$OUT/official-$mode.json" 2>"$OUT/official-$mode.err" || { echo "official $mode failed:"; tail -5 "$OUT/official-$mode.err"; }
  [ "${CF:-1}" = 0 ] && continue
  preset=(--mode "$mode")
  [ -n "${CF_PRESET:-}" ] && preset=(--preset "${CF_PRESET//\{mode\}/$mode}")
  # shellcheck disable=SC2086
  python3 -m cfcli bench "${preset[@]}" --frames "$FRAMES" --repeat "${CF_REPEAT:-3}" --random-weights --json \
    ${CF_FLAGS:-} >"$OUT/cf-$mode.json" 2>"$OUT/cf-$mode.err" || { echo "cf bench $mode failed:"; tail -5 "$OUT/cf-$mode.err"; }
done
python3 - "$OUT" ${MODES[@]} <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def read(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def gib(value):
    return f"{value:>9.1f}" if value is not None else f"{'-':>9}"


print(f"{'mode':<10} {'':<9} {'DiT s':>7} {'DiT fps':>8} {'e2e s':>7} {'e2e fps':>8} {'peak GiB':>9}")
for mode in sys.argv[2:]:
    off, cf = read(f"official-{mode}"), read(f"cf-{mode}")
    if off:
        m = off["median"]
        print(f"{mode:<10} {'official':<9} {m['dit_s']:>7.2f} {m['dit_fps']:>8.1f} {m['e2e_s']:>7.2f} "
              f"{m['e2e_fps']:>8.1f} {gib(off['peak_gib'])}   ({off['gpu']}, finite {off['finite']})")
    if cf:
        dit, e2e = cf["frames"] / cf["fps_generation"], cf["frames"] / cf["fps_end_to_end"]
        print(f"{mode:<10} {'cfcli':<9} {dit:>7.2f} {cf['fps_generation']:>8.1f} {e2e:>7.2f} "
              f"{cf['fps_end_to_end']:>8.1f} {gib(cf['peak_vram_gib'])}   ({cf['fast_path']}, first frame "
              f"{cf['first_frame_s']:.3f} s)")
    if off and cf:
        print(f"{mode:<10} {'speed-up':<9} {cf['fps_generation'] / off['median']['dit_fps']:>7.2f}x"
              f" {'':>8} {cf['fps_end_to_end'] / off['median']['e2e_fps']:>7.2f}x")
PY
