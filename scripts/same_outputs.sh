#!/usr/bin/env bash
# Byte-identity check for refactors (docs/design.md, "Refactoring"): run the same small,
# seeded jobs with two `libre` binaries and compare every output file byte for byte.
#
#   scripts/same_outputs.sh OLD_BINARY NEW_BINARY [DIR]     (default DIR: runs/same-outputs)
#
# Jobs (real MNIST, the zoo LeNet5, seed 0, small sizes so the whole check takes a few minutes on
# two cores): `libre quickstart` (its run directory and report), `libre calibrate` for LiBRe, KD,
# Mahalanobis and feature squeezing, `libre detect` in csv, jsonl and table format (plus a
# sharded run and its merge), `libre evaluate` on an experiment with classic detectors and an
# adaptive attack (summary.json, scores.csv, robust.csv, the report; calibrated detectors and a
# DNN thresholded at 5% of its clean rows), and `libre metrics`.
# Only wall-clock times, dates and the version string (with its git revision) are ignored
# (scripts/lib/compare_outputs.py says exactly what); everything else must match exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "$1") NEW=$(realpath "$2")
DIR=${3:-runs/same-outputs}
rm -rf "$DIR"
mkdir -p "$DIR"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

jobs() { # BINARY OUT
  local L=$1 O=$2
  mkdir -p "$O"
  "$L" -q quickstart --out "$O/qs" --train-images 2000 --test-images 60 --device cpu >"$O/qs.stdout"
  local M="$O/qs/libre/model.safetensors" CAL='mnist:train[55000:55500]' FIT='mnist:train[0:2000]'
  "$L" -q calibrate --weights "$M" --data "$CAL" --out "$O/libre.safetensors" >"$O/cal-libre.txt"
  "$L" -q calibrate --weights zoo:lenet5-mnist --data "$CAL" --detector kd --fit-data "$FIT" \
    --out "$O/kd.safetensors" >"$O/cal-kd.txt"
  "$L" -q calibrate --weights zoo:lenet5-mnist --data "$CAL" --detector mahalanobis \
    --fit-data "$FIT" --out "$O/maha.safetensors" >"$O/cal-maha.txt"
  "$L" -q calibrate --weights zoo:lenet5-mnist --data "$CAL" --detector squeeze \
    --out "$O/squeeze.safetensors" --json >"$O/cal-squeeze.jsonl"
  local T='mnist:test[0:300]'
  for d in libre kd maha squeeze; do
    "$L" -q detect --weights "$O/$d.safetensors" "$T" --format csv >"$O/detect-$d.csv"
    "$L" -q detect --weights "$O/$d.safetensors" "$T" --format jsonl >"$O/detect-$d.jsonl"
  done
  "$L" -q detect --weights "$O/libre.safetensors" 'mnist:test[0:20]' --format table \
    >"$O/detect-table.txt"
  "$L" -q detect --weights "$M" --threshold 0.05 --score softmax-variance 'mnist:test[0:40]' \
    --format csv --fpr 0.1 >"$O/detect-fpr.csv" 2>"$O/detect-fpr.err" || echo "exit $?" >>"$O/detect-fpr.err"
  for k in 0 1 2; do
    "$L" -q detect --weights "$O/libre.safetensors" "$T" --batch-size 64 --shard "$k/3" \
      --out "$O/shards/part.csv"
  done
  "$L" -q detect merge "$O/shards"/part.*-of-3.csv --out "$O/merged.csv"
  cat >"$O/exp.toml" <<TOML
title = "same-outputs check"
data = "mnist:test[0:60]"
seed = 0
bootstrap = 50
[[model]]
name = "libre"
weights = "$O/libre.safetensors"
scores = ["feature-variance", "softmax-variance"]
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp", "entropy"]
[[model]]
name = "kd"
weights = "$O/kd.safetensors"
scores = ["kd"]
[[attack]]
name = "pgd"
eps = [0.3]
steps = 10
step_size = 0.03
[[attack]]
name = "selective"
eps = [0.3]
steps = 20
params = { restarts = 1 }
TOML
  "$L" -q evaluate "$O/exp.toml" --out "$O/eval" >"$O/eval.stdout"
  "$L" -q metrics --scores "$O/eval/scores.csv" >"$O/metrics.txt" 2>&1 || echo "exit $?" >>"$O/metrics.txt"
  "$L" -q metrics --robust --scores "$O/eval/scores.csv" >"$O/metrics-robust.txt" 2>&1 ||
    echo "exit $?" >>"$O/metrics-robust.txt"
}

# Both runs write to the same path (files record their inputs' paths), then move aside.
# (Not inside `&&` lists: bash ignores `set -e` there.)
# The binary runs from one path too (it appears in usage lines and the recorded argv).
mkdir -p "$DIR/bin"
echo "old: $OLD"
cp "$OLD" "$DIR/bin/libre"
jobs "$DIR/bin/libre" "$DIR/run"
mv "$DIR/run" "$DIR/old"
echo "new: $NEW"
cp "$NEW" "$DIR/bin/libre"
jobs "$DIR/bin/libre" "$DIR/run"
mv "$DIR/run" "$DIR/new"

python3 scripts/lib/compare_outputs.py "$DIR/old" "$DIR/new"
