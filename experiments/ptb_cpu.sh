#!/usr/bin/env bash
# The AdvantageNAS PTB recurrent-cell search with the `cpu` preset (data fallback: ../shared/data/ptb has no train
# file), each search followed by the `cpu` retraining from scratch; then the table of experiments/retrain_table.py.
# advantage: seeds 0 1 2; reinforce, parsec, gdas, proxyless: seed 0. Rerunning continues where it was cut off.
#
#   experiments/ptb_cpu.sh DATA OUT [DEVICE] [PARALLEL]
set -euo pipefail
DATA=$1; OUT=$2; DEVICE=${3:-cpu}; PARALLEL=${4:-1}
mkdir -p "$OUT"
export DATA OUT DEVICE
printf '%s\n' "advantage 0" "reinforce 0" "parsec 0" "gdas 0" "proxyless 0" "advantage 1" "advantage 2" |
  xargs -P "$PARALLEL" -L 1 sh -c '
    run="$OUT/$0-s$1"; resume() { [ -f "$1/config.json" ] && echo --resume || true; }
    [ -f "$run/result.json" ] || oneshot search --space rnn --task ptb --strategy "$0" --seed "$1" --preset cpu \
      --data "$DATA" --device "$DEVICE" --out "$run" $(resume "$run") --quiet || exit 255
    [ -f "$run/retrain-cpu.json" ] || oneshot retrain "$run" --preset cpu --device "$DEVICE" \
      $(resume "$run/retrain-cpu") --quiet || exit 255'
rm -f "$OUT"/*/checkpoint.pt "$OUT"/*/retrain-cpu/checkpoint.pt
python "$(dirname "$0")/retrain_table.py" "$OUT"
