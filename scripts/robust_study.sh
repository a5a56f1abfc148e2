#!/usr/bin/env bash
# The robust-detection study of docs/results.md ("Adversarial LiBRe training: does a detector
# hold?"): candidate A (`--recipe libre-robust` on the adversarially trained LeNet5), its choice
# checked on a validation slice of the training set, then the test table (strong adaptive suite,
# threshold calibrated once at 5% FPR on clean held-out digits) beside the robust classifier
# alone, and the honesty checks (eps 1, SPSA, transfer, Tramer's eps/2 classifier bound).
#
#   scripts/robust_study.sh [OUT]           N=200 test digits by default (N=1000: the issue's size)
#   ADV_HINGE=all scripts/robust_study.sh   candidate A (disagreement on every crafted copy)
#   TRAIN='mnist:train[0:50000]' EPOCHS=2 scripts/robust_study.sh runs/robust-D
#                                           longer training (candidate D of results.md)
#   CHECKS=0 ...                            skip the honesty checks (eps 1, SPSA, transfer, eps/2)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/experiment.sh
LIBRE=${LIBRE:-target/release/libre}
OUT=${1:-runs/robust-mnist}
N=${N:-200}
ADV_HINGE=${ADV_HINGE:-misclassified}
TRAIN=${TRAIN:-'mnist:train[0:20000]'}
EPOCHS=${EPOCHS:-1}
CHECKS=${CHECKS:-1}
mkdir -p "$OUT"
A="$OUT/A"
if [ ! -s "$OUT/A.safetensors" ]; then
  [ -s "$A/model.safetensors" ] ||
    "$LIBRE" -q finetune --recipe libre-robust --weights zoo:lenet5-mnist-adv \
      --adv-hinge "$ADV_HINGE" --data "$TRAIN" --epochs "$EPOCHS" --out "$A" >/dev/null
  "$LIBRE" -q calibrate --weights "$A/model.safetensors" --data 'mnist:train[55000:60000]' \
    --fpr 0.05 --out "$OUT/A.safetensors" >/dev/null
fi
# Validation (training images only): the suite at a cheap budget.
{
  experiment_head "validation: candidate A, strong suite at 100 steps, 1 restart" \
    'mnist:train[50000:50100]'
  model A "$OUT/A.safetensors" '"feature-variance"'
  attack pgd 0.3 100 0.01 'adaptive = "strong"
params = { restarts = 1 }'
} >"$OUT/validation.toml"
"$LIBRE" evaluate "$OUT/validation.toml" --out "$OUT/validation"
# Test: the full suite on A; the robust classifier alone under the suite's classifier part.
{
  experiment_head "MNIST test: libre-robust A vs the adversarially trained LeNet5 alone" \
    "mnist:test[0:$N]"
  model A "$OUT/A.safetensors" '"feature-variance"'
  model adv zoo:lenet5-mnist-adv '"msp"'
  attack pgd 0.3 40 0.01
  attack pgd 0.3 200 0.01 'adaptive = "strong"
models = ["A"]'
  attack pgd-restarts 0.3 200 0.01 'label = "pgd-restarts-alone"
models = ["adv"]'
} >"$OUT/test.toml"
"$LIBRE" evaluate "$OUT/test.toml" --out "$OUT/test"
# Honesty checks on the first 100 test digits.
[ "$CHECKS" = 1 ] && {
  experiment_head "checks: eps 1, SPSA, transfer, eps/2 classifiers" 'mnist:test[0:100]'
  model A "$OUT/A.safetensors" '"feature-variance"'
  model adv zoo:lenet5-mnist-adv '"msp"'
  attack selective 1.0 50 0.05 'params = { restarts = 1 }
models = ["A"]'
  attack spsa 0.3 20 "" 'params = { samples = 64 }
models = ["A"]'
  attack pgd 0.3 40 0.01 'surrogate = "zoo:lenet5-mnist"
models = ["A"]'
  attack pgd-restarts 0.15 200 0.01
} | sed '/^step_size = $/d' >"$OUT/checks.toml"
[ "$CHECKS" = 1 ] && "$LIBRE" evaluate "$OUT/checks.toml" --out "$OUT/checks"
# Clean accuracy and FPR on the whole test set.
"$LIBRE" eval --weights "$OUT/A.safetensors" --data mnist:test
"$LIBRE" detect --weights "$OUT/A.safetensors" mnist:test --out "$OUT/A-test.csv"
python3 scripts/adaptive_table.py "$OUT/test/summary.json"
