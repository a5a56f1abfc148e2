#!/usr/bin/env bash
# Issue 26, "combined detectors" in their simplest form: a classic detector (KD, Mahalanobis)
# fitted on the adversarially trained LeNet5 (`zoo:lenet5-mnist-adv`), so that it only has to catch
# what the robust classifier misses. The same protocol as scripts/robust_study.sh: fitted on
# mnist:train[0:10000], calibrated at 5% FPR on mnist:train[55000:60000], validation on
# mnist:train[50000:50100] (the suite at 100 steps, 1 restart), test on the first N test digits
# (the full strong suite, EoT 1: both detectors are deterministic), eps 0.3.
#
#   scripts/robust_classic.sh [OUT]     N=200 by default; MODELS="kd maha"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/experiment.sh
LIBRE=${LIBRE:-target/release/libre}
OUT=${1:-runs/robust-classic}
N=${N:-200}
MODELS=${MODELS:-"kd maha"}
BASE=zoo:lenet5-mnist-adv
mkdir -p "$OUT"
score_of() { case "$1" in kd) echo '"kd"' ;; maha) echo '"mahalanobis"' ;; esac; }
for m in $MODELS; do
  case "$m" in
    kd) flags=(--detector kd) ;;
    maha) flags=(--detector mahalanobis) ;;
    *) echo "unknown detector '$m' (kd, maha)" >&2; exit 2 ;;
  esac
  [ -s "$OUT/$m.safetensors" ] || "$LIBRE" -q calibrate --weights "$BASE" \
    --data 'mnist:train[55000:60000]' --fpr 0.05 --fit-data 'mnist:train[0:10000]' "${flags[@]}" \
    --out "$OUT/$m.safetensors" >/dev/null
done
{
  experiment_head "validation: classic detectors on the robust LeNet5, suite at 100 steps, 1 restart" \
    'mnist:train[50000:50100]'
  for m in $MODELS; do model "$m" "$OUT/$m.safetensors" "$(score_of "$m")"; done
  attack pgd 0.3 100 0.01 'adaptive = "strong"
params = { restarts = 1 }'
} >"$OUT/validation.toml"
"$LIBRE" evaluate "$OUT/validation.toml" --out "$OUT/validation"
{
  experiment_head "MNIST test: classic detectors on the robust LeNet5" "mnist:test[0:$N]"
  for m in $MODELS; do model "$m" "$OUT/$m.safetensors" "$(score_of "$m")"; done
  attack pgd 0.3 40 0.01
  attack pgd 0.3 200 0.01 'adaptive = "strong"'
} >"$OUT/test.toml"
"$LIBRE" evaluate "$OUT/test.toml" --out "$OUT/test"
python3 scripts/adaptive_table.py "$OUT/test/summary.json"
