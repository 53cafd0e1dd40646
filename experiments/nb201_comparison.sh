#!/usr/bin/env bash
# The AdvantageNAS NB201 comparison: every strategy x 3 seeds with the `cpu` preset, then the report
# (Markdown table, accuracy-vs-time curves with the equal-time column taken at advantage's search time).
#
#   experiments/nb201_comparison.sh DATA OUT [DEVICE] [PARALLEL] [SEEDS] [METHODS]
#   e.g. experiments/nb201_comparison.sh ../shared/data/cifar10 results/nb201-cpu cuda 10
#
# All runs of one seed run at the same time (PARALLEL of them), so that every method of a seed sees the same
# machine load: their wall-clock times are comparable, which the equal-time column relies on.
set -euo pipefail
DATA=$1; OUT=$2; DEVICE=${3:-cpu}; PARALLEL=${4:-1}; SEEDS=${5:-"0 1 2"}
METHODS=${6:-"advantage advantage_wb reinforce parsec gdas proxyless nasp snas_relaxed darts random"}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for method in $METHODS; do echo "$method $seed"; done |
    xargs -P "$PARALLEL" -n 2 sh -c 'oneshot search --space nb201 --strategy "$0" --seed "$1" --preset cpu \
      --data "'"$DATA"'" --device "'"$DEVICE"'" --out "'"$OUT"'/$0-s$1" --quiet --overwrite > "'"$OUT"'/$0-s$1.log" 2>&1 \
      || { echo "failed: $0 seed $1"; cat "'"$OUT"'/$0-s$1.log"; }'
done
rm -f "$OUT"/*/checkpoint.pt "$OUT"/*.log
oneshot report "$OUT"/*-s* --out "$OUT/report"
