#!/usr/bin/env bash
# SNAS (moderate) and first-order DARTS on the DARTS CNN space with the `cpu` preset (same length), each followed by
# the `cpu` retraining from scratch; then the table of experiments/retrain_table.py.
#
#   experiments/darts_cpu.sh DATA OUT [DEVICE] [SEED]
set -euo pipefail
DATA=$1; OUT=$2; DEVICE=${3:-cpu}; SEED=${4:-0}
mkdir -p "$OUT"
resume() { [ -f "$1/config.json" ] && echo --resume || true; }  # rerunning the script continues where it was cut off
run() {  # NAME STRATEGY [--hp ...]: search, then retrain from scratch
  local name=$1 strategy=$2; shift 2
  [ -f "$OUT/$name/result.json" ] || oneshot search --space darts --strategy "$strategy" "$@" --preset cpu \
    --seed "$SEED" --data "$DATA" --device "$DEVICE" --out "$OUT/$name" $(resume "$OUT/$name") --quiet
  [ -f "$OUT/$name/retrain-cpu.json" ] || oneshot retrain "$OUT/$name" --preset cpu --device "$DEVICE" \
    $(resume "$OUT/$name/retrain-cpu") --quiet
}
run "snas-moderate-s$SEED" snas --hp level=moderate
run "darts-s$SEED" darts
rm -f "$OUT"/*/checkpoint.pt "$OUT"/*/retrain-cpu/checkpoint.pt
python "$(dirname "$0")/retrain_table.py" "$OUT"
