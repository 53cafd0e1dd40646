#!/usr/bin/env bash
# Does ABS shrinking help? For each seed: shrink NB201 with ABS (uniform single-path supernet, `cpu` preset,
# 16 of 24 operators dropped), then search the kept space with random (SPOS), advantage and darts.
# The runs without ABS are those of experiments/nb201_comparison.sh (same preset and seeds).
#
#   experiments/abs_nb201.sh DATA OUT [DEVICE] [PARALLEL] [SEEDS]
set -euo pipefail
DATA=$1; OUT=$2; DEVICE=${3:-cpu}; PARALLEL=${4:-1}; SEEDS=${5:-"0 1 2"}
mkdir -p "$OUT"
for seed in $SEEDS; do echo "$seed"; done |
  xargs -P "$PARALLEL" -n 1 sh -c 'oneshot shrink --space nb201 --preset cpu --seed "$0" --data "'"$DATA"'" \
    --device "'"$DEVICE"'" --out "'"$OUT"'/shrink-s$0" --quiet --overwrite > "'"$OUT"'/shrink-s$0.log" 2>&1 \
    || { echo "failed: shrink seed $0"; cat "'"$OUT"'/shrink-s$0.log"; }'
for seed in $SEEDS; do
  for method in random advantage darts; do echo "$method $seed"; done
done | xargs -P "$PARALLEL" -n 2 sh -c 'oneshot search --space nb201 --space-from "'"$OUT"'/shrink-s$1" \
    --strategy "$0" --seed "$1" --preset cpu --data "'"$DATA"'" --device "'"$DEVICE"'" --out "'"$OUT"'/abs-$0-s$1" \
    --quiet --overwrite > "'"$OUT"'/abs-$0-s$1.log" 2>&1 || { echo "failed: $0 seed $1"; cat "'"$OUT"'/abs-$0-s$1.log"; }'
rm -f "$OUT"/*/checkpoint.pt "$OUT"/*/theta0.pt "$OUT"/*.log
oneshot report "$OUT"/abs-* --out "$OUT/report"
