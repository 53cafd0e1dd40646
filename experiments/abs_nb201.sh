#!/usr/bin/env bash
# Does ABS shrinking help? For each seed: shrink the NB201 4-op space with ABS (16 of 24 operators dropped), then
# search the kept space with random (SPOS), advantage and darts at the `cpu` preset. The runs without ABS are those
# of experiments/nb201_comparison.sh (same preset, space and seeds).
#
#   experiments/abs_nb201.sh DATA OUT [DEVICE] [PARALLEL] [SEEDS] [SHRINK_PRESET]
#
# SHRINK_PRESET: the supernet ABS scores. `cpu` (default): the AdvantageNAS cpu supernet (C=8, one cell per stage,
# one architecture shared by all cells). `abs-cpu`: ABS's own NB201 supernet (NB201's network with lastact, C=16,
# N=5, per-cell uniform sampling, no clipping, 25k images; 3 epochs), on the 4-op space that the searches use.
set -euo pipefail
DATA=$1; OUT=$2; DEVICE=${3:-cpu}; PARALLEL=${4:-1}; SEEDS=${5:-"0 1 2"}; SHRINK_PRESET=${6:-cpu}
mkdir -p "$OUT"
export DATA OUT DEVICE SHRINK_PRESET
for seed in $SEEDS; do echo "$seed"; done |
  xargs -P "$PARALLEL" -n 1 sh -c '[ -f "$OUT/shrink-s$0/shrink.json" ] || oneshot shrink --space nb201 \
    --space-option ops=4 --preset "$SHRINK_PRESET" --seed "$0" --data "$DATA" --device "$DEVICE" \
    --out "$OUT/shrink-s$0" --quiet --overwrite > "$OUT/shrink-s$0.log" 2>&1 \
    || { echo "failed: shrink seed $0"; cat "$OUT/shrink-s$0.log"; }'
for seed in $SEEDS; do
  for method in random advantage darts; do echo "$method $seed"; done
done | xargs -P "$PARALLEL" -n 2 sh -c '[ -f "$OUT/abs-$0-s$1/result.json" ] || oneshot search --space nb201 \
    --space-from "$OUT/shrink-s$1" --strategy "$0" --seed "$1" --preset cpu --data "$DATA" --device "$DEVICE" \
    --out "$OUT/abs-$0-s$1" --quiet --overwrite > "$OUT/abs-$0-s$1.log" 2>&1 \
    || { echo "failed: $0 seed $1"; cat "$OUT/abs-$0-s$1.log"; }'
rm -f "$OUT"/*/checkpoint.pt "$OUT"/*/theta0.pt "$OUT"/*.log
oneshot report "$OUT"/abs-* --out "$OUT/report"
