#!/usr/bin/env bash
# Issue #27's next device call: where a live switch's time goes (`scripts/switch_trace.py`), both modes, with Python's
# default GIL switch interval and with 0.5 ms (a hypothesis: the live threads hand the GIL over late). Each run is a
# fresh process; the table goes to stdout, each run's JSON to $OUT/trace-MODE-INTERVAL.json. Run from the repository
# root with the wheels installed.
#
#   scripts/trace_gpu.sh [MODES...]     env: OUT (/tmp/trace-gpu), SWITCHES (10), INTERVALS ("default 0.0005")
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
OUT=${OUT:-/tmp/trace-gpu}
SWITCHES=${SWITCHES:-10}
export CF_HOME=${CF_HOME:-$OUT/cf-home}
mkdir -p "$OUT"
MODES=("$@")
[ $# -eq 0 ] && MODES=(chunkwise framewise)
for interval in ${INTERVALS:-default 0.0005}; do
  for mode in "${MODES[@]}"; do
    name=$(basename "$mode" .yaml)  # a tiny preset's file: a dry run on the CPU
    echo "== $name, GIL switch interval $interval"
    if [ "$interval" = default ]; then unset SWITCH_INTERVAL; else export SWITCH_INTERVAL=$interval; fi
    timeout 150 python3 scripts/switch_trace.py "$mode" "$SWITCHES" 2>"$OUT/trace-$name-$interval.err" \
      || { echo "$mode failed:"; grep -v '^{' "$OUT/trace-$name-$interval.err" | tail -5; }
    grep '^{' "$OUT/trace-$name-$interval.err" >"$OUT/trace-$name-$interval.json"
  done
done
