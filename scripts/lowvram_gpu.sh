#!/usr/bin/env bash
# Every memory plan on a GPU, with random full-size weights (umT5-XXL included): `cf bench` per budget and mode,
# then one table: plan, peak GiB per phase (text / DiT only / DiT + decode), fps, first frame, latent relative L2
# against the default run (same seed, same random weights: the text features are the same bits in every plan).
#
#   scripts/lowvram_gpu.sh [MODES...]      (default: framewise chunkwise; results under $OUT or /tmp/lowvram)
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/lowvram}
mkdir -p "$OUT"
MODES=("${@:-framewise chunkwise}")
BUDGETS=("default:" "max11:--max-vram 11" "lowvram:--low-vram" "max7:--max-vram 7" "max5:--max-vram 5")
for mode in ${MODES[@]}; do
  for entry in "${BUDGETS[@]}"; do
    name="$mode-${entry%%:*}"
    # shellcheck disable=SC2086
    timeout "${TIMEOUT:-240}" python3 -m cfcli bench --mode "$mode" --random-weights --repeat 1 --json \
      --save-latents "$OUT/$name.safetensors" ${entry#*:} >"$OUT/$name.json" 2>"$OUT/$name.err" \
      || { echo "$name failed:"; tail -4 "$OUT/$name.err"; }
  done
done
python3 - "$OUT" ${MODES[@]} <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file

out = Path(sys.argv[1])
print(f"{'run':<20} {'text':>6} {'DiT':>6} {'+dec':>6} {'peak':>6} {'fps':>6} {'DiT fps':>7} {'first':>6} "
      f"{'rel L2':>8}  plan")
for mode in sys.argv[2:]:
    ref = out / f"{mode}-default.safetensors"
    ref = load_file(str(ref))["latents"] if ref.exists() else None
    for name in ("default", "max11", "lowvram", "max7", "max5"):
        f = out / f"{mode}-{name}.json"
        if not f.exists() or not f.read_text().strip():
            print(f"{mode}-{name:<12} (no result)")
            continue
        r = json.loads(f.read_text())
        ph = r.get("phase_peak_gib") or {}
        lat = out / f"{mode}-{name}.safetensors"
        err = float("nan")
        if ref is not None and lat.exists():
            x = load_file(str(lat))["latents"]
            err = float((x - ref).norm() / ref.norm())
        g = lambda k: f"{ph[k]:.2f}" if ph.get(k) is not None else "-"
        print(f"{mode + '-' + name:<20} {g('text'):>6} {g('generation'):>6} {g('decode'):>6} "
              f"{r['peak_vram_gib'] or 0:>6.2f} {r['fps_end_to_end']:>6.1f} {r['fps_generation']:>7.1f} "
              f"{r['first_frame_s']:>6.3f} {err:>8.2e}  {r.get('plan')}")
PY
