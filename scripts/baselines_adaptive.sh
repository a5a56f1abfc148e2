#!/usr/bin/env bash
# Adaptive (mimicry) PGD against a fitted classic detector (docs/results.md, "Baselines"): PGD on
# loss - C * detector score (the score differentiated through the network's taps; the logistic
# regression as tensor ops), C in {1, 10}, beside plain PGD, on the test images of
# scripts/baselines_study.sh.
#
#   scripts/baselines_adaptive.sh OUT_OF_THE_STUDY DETECTOR [SCORE]   e.g. runs/baselines-mnist maha-lr mahalanobis
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/experiment.sh
OUT=${1:?usage: baselines_adaptive.sh OUT DETECTOR [SCORE]}
DET=${2:?usage: baselines_adaptive.sh OUT DETECTOR [SCORE]}
SCORE=${3:-mahalanobis}
LIBRE=${LIBRE:-target/release/libre}
DATA=$(sed -n 's/^data = "\(.*\)"/\1/p' "$OUT/experiment.toml")
{
  printf 'title = "adaptive PGD against %s"\ndata = "%s"\nseed = 0\nbootstrap = 200\nbatch_size = 250\n' "$DET" "$DATA"
  model "$DET" "$OUT/$DET.safetensors" "\"$SCORE\""
  attack pgd 0.3 40 0.01 'adaptive = [1.0, 10.0]'
} >"$OUT/adaptive-$DET.toml"
"$LIBRE" evaluate "$OUT/adaptive-$DET.toml" --out "$OUT/adaptive-$DET"
