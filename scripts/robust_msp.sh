#!/usr/bin/env bash
# Issue 26, candidate E: the predictive's own confidence as the detector on a robust classifier.
# Robust classifiers tend to be unsure where an eps-ball crosses their boundary, so flagging
# low maximum softmax probability (msp) may catch what fools them. Two models: `C` (the
# libre-robust candidate of scripts/robust_study.sh: its 20-member MC-averaged predictive) and the
# adversarially trained LeNet5 alone (`zoo:lenet5-mnist-adv`), each calibrated on msp at 5% FPR on
# mnist:train[55000:60000], then the strong suite attacking msp itself (mimicry, selective and
# orthogonal push the msp score down while fooling the classifier), eps 0.3; validation on
# mnist:train[50000:50100] (100 steps, 1 restart), test on the first N test digits; then the
# margin and wrong-class-confidence forms of the attacks on the same digits, the checks (eps 1,
# 5x budget, SPSA, transfer; first 100 digits) and the worst case per image over all test runs
# (docs/results.md, issue 26, candidate E).
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
{
  experiment_head "validation: msp on robust classifiers, suite at 100 steps, 1 restart" \
    'mnist:train[50000:50100]'
  model C "$OUT/C.safetensors" '"msp"'
  model adv "$OUT/adv.safetensors" '"msp"'
  attack pgd 0.3 100 0.01 'adaptive = "strong"
params = { restarts = 1 }'
} >"$OUT/validation.toml"
"$LIBRE" evaluate "$OUT/validation.toml" --out "$OUT/validation"
{
  experiment_head "MNIST test: msp on robust classifiers" "mnist:test[0:$N]"
  model C "$OUT/C.safetensors" '"msp"'
  model adv "$OUT/adv.safetensors" '"msp"'
  attack pgd 0.3 40 0.01
  attack pgd 0.3 200 0.01 'adaptive = "strong"'
} >"$OUT/test.toml"
"$LIBRE" evaluate "$OUT/test.toml" --out "$OUT/test"
# The same digits under the three attacks with the margin and the wrong-class-confidence losses
# (a confidence score is evaded by a confident misclassification).
head_of() { sed -n '1,/^\[\[attack\]\]/p' "$OUT/test.toml" | sed '$d'; }
for loss in margin wrong-confidence; do
  {
    head_of
    attack pgd-restarts 0.3 200 0.03 "label = \"pgd-restarts-$loss\"
params = { loss = \"$loss\" }"
    attack selective 0.3 200 0.03 "label = \"selective-$loss\"
params = { loss = \"$loss\" }"
    if [ "$loss" = margin ]; then
      attack orthogonal 0.3 200 0.03 'label = "orthogonal-margin"
params = { loss = "margin" }'
    else
      attack mimicry 0.3 200 0.03 'label = "mimicry-wrong-confidence-10"
params = { loss = "wrong-confidence", adaptive_c = 10.0 }'
    fi
  } >"$OUT/test-$loss.toml"
  "$LIBRE" evaluate "$OUT/test-$loss.toml" --out "$OUT/test-$loss"
done
# Checks on the first 100 test digits: eps 1, 5x the budget, SPSA, transfer.
{
  experiment_head "checks: msp on robust classifiers" 'mnist:test[0:100]'
  model C "$OUT/C.safetensors" '"msp"'
  model adv "$OUT/adv.safetensors" '"msp"'
  attack selective 1.0 100 0.05 'label = "selective-margin-eps1"
params = { loss = "margin", restarts = 1 }'
  attack selective 0.3 1000 0.01 'label = "selective-margin-1000x3"
params = { loss = "margin", restarts = 3 }'
  attack spsa 0.3 20 "" 'params = { samples = 64 }'
  attack pgd 0.3 40 0.01 'surrogate = "zoo:lenet5-mnist"'
} | sed '/^step_size = $/d' >"$OUT/checks.toml"
"$LIBRE" evaluate "$OUT/checks.toml" --out "$OUT/checks"
# Worst case per image over every attack of the three test runs, per model at its threshold.
python3 scripts/lib/union_scores.py "$OUT/union.csv" "$OUT/test" "$OUT/test-margin" \
  "$OUT/test-wrong-confidence"
for m in C adv; do
  t=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(next(t["threshold"] for t in s["thresholds"] if t["detector"] == sys.argv[2] + "/msp"))' "$OUT/test/summary.json" "$m")
  awk -F, -v m="$m" 'NR == 1 || $3 == m' "$OUT/union.csv" >"$OUT/union-$m.csv"
  "$LIBRE" metrics --robust --scores "$OUT/union-$m.csv" --threshold "$t" --bootstrap 1000
done
