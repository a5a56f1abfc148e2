#!/usr/bin/env bash
# Issue 26, candidate E: the predictive's own confidence as the detector on a robust classifier.
# Robust classifiers tend to be unsure where an eps-ball crosses their boundary, so flagging
# low maximum softmax probability (msp) may catch what fools them. Two models: `C` (the
# libre-robust candidate of scripts/robust_study.sh: its 20-member MC-averaged predictive) and the
# adversarially trained LeNet5 alone (`zoo:lenet5-mnist-adv`), each calibrated on msp at 5% FPR on
# mnist:train[55000:60000], then the strong suite attacking msp itself (mimicry, selective and
# orthogonal push the msp score down while fooling the classifier), eps 0.3; validation on
# mnist:train[50000:50100] (100 steps, 1 restart), test on the first N test digits.
#
#   scripts/robust_msp.sh C_MODEL [OUT]     C_MODEL: a libre-robust run's model.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/experiment.sh
LIBRE=${LIBRE:-target/release/libre}
C_MODEL=${1:?usage: robust_msp.sh C_MODEL [OUT]}
OUT=${2:-runs/robust-msp}
N=${N:-200}
mkdir -p "$OUT"
for m in C adv; do
  w=$C_MODEL; [ "$m" = adv ] && w=zoo:lenet5-mnist-adv
  [ -s "$OUT/$m.safetensors" ] || "$LIBRE" -q calibrate --weights "$w" --score msp \
    --data 'mnist:train[55000:60000]' --fpr 0.05 --out "$OUT/$m.safetensors" >/dev/null
done
suite() { printf 'data = "%s"\nseed = 0\nbootstrap = 1000\nbatch_size = 200\n' "$1"; }
{
  printf 'title = "validation: msp on robust classifiers, suite at 100 steps, 1 restart"\n'
  suite 'mnist:train[50000:50100]'
  model C "$OUT/C.safetensors" '"msp"'
  model adv "$OUT/adv.safetensors" '"msp"'
  attack pgd 0.3 100 0.01 'adaptive = "strong"
params = { restarts = 1 }'
} >"$OUT/validation.toml"
"$LIBRE" evaluate "$OUT/validation.toml" --out "$OUT/validation"
{
  printf 'title = "MNIST test: msp on robust classifiers"\n'
  suite "mnist:test[0:$N]"
  model C "$OUT/C.safetensors" '"msp"'
  model adv "$OUT/adv.safetensors" '"msp"'
  attack pgd 0.3 40 0.01
  attack pgd 0.3 200 0.01 'adaptive = "strong"'
} >"$OUT/test.toml"
"$LIBRE" evaluate "$OUT/test.toml" --out "$OUT/test"
python3 scripts/adaptive_table.py "$OUT/test/summary.json"
