#!/usr/bin/env bash
# The adaptive evaluation of docs/results.md ("Adaptive evaluation"): every detector attacked by
# the `adaptive = "strong"` suite (pgd-restarts, mimicry C = 10/100/1000, mimicry-log C = 1/10
# where the score is positive, selective, orthogonal; 200 steps of eps/10 halved each quarter,
# 2 restarts, per-image early stop), each through its own score and the threshold fixed once on
# clean held-out images, worst case per image.
#
#   scripts/adaptive_study.sh mnist [OUT]       LiBRe (the README detector) + KD, KD-BU, LID,
#                                               Mahalanobis, MC dropout on the zoo LeNet5
#   scripts/adaptive_study.sh fashion [OUT]     the same recipe on Fashion-MNIST, on the LeNet5
#                                               of scripts/fashion_libre.sh (eps 0.1, 0.2)
#   N=200 EPS="0.3" scripts/adaptive_study.sh mnist   first N test images, other eps lists
#   MODELS="libre kd" ...                             a subset of the detectors
#
# Images (disjoint, nothing chosen on test images): the LiBRe members fine-tuned on
# train[0:50000]; classic densities / Gaussians / LID references fitted on train[0:10000]; the
# logistic regressions of KD-BU and LID on FGSM (eps 0.3) examples of train[50000:51000] vs
# those clean images; every detector calibrated at 5% FPR on train[55000:60000]; attacked on
# test[0:N]. Mahalanobis is the plain (last-layer confidence, no input pre-processing) form here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/experiment.sh
SET=${1:?usage: adaptive_study.sh mnist [OUT]}
LIBRE=${LIBRE:-target/release/libre}
N=${N:-1000}
case "$SET" in
  mnist) DATA=mnist; DNN=zoo:lenet5-mnist; EPS=${EPS:-"0.1, 0.3"} ;;
  # The LeNet5 of scripts/fashion_libre.sh (trained there first); nothing retuned.
  fashion) DATA=fashion-mnist; DNN=${DNN:-runs/fashion-libre/dnn/model.safetensors}
    EPS=${EPS:-"0.1, 0.2"} ;;
  *) echo "unknown set '$SET' (mnist, fashion)" >&2; exit 2 ;;
esac
OUT=${2:-runs/adaptive-$SET}
MODELS=${MODELS:-"libre kd kd-bu lid maha mcd"}
mkdir -p "$OUT"
FIT="$DATA:train[0:10000]" CAL="$DATA:train[55000:60000]" LRCLEAN="$DATA:train[50000:51000]"
# The README's LiBRe detector.
if [ ! -s "$OUT/libre.safetensors" ]; then
  [ -s "$OUT/libre-run/model.safetensors" ] ||
    "$LIBRE" -q finetune --recipe libre --objective anchored --lr 0.05 --weights "$DNN" \
      --data "$DATA:train[0:50000]" --epochs 2 --out "$OUT/libre-run" >/dev/null
  "$LIBRE" -q calibrate --weights "$OUT/libre-run/model.safetensors" --data "$CAL" --fpr 0.05 \
    --out "$OUT/libre.safetensors" >/dev/null
fi
[ -s "$OUT/fit-fgsm.safetensors" ] || "$LIBRE" -q attack --weights "$DNN" --data "$LRCLEAN" \
  --attack fgsm --eps 0.3 --out "$OUT/fit-fgsm.safetensors" >/dev/null
LR=(--fit-adversarial "$OUT/fit-fgsm.safetensors" --fit-clean "$LRCLEAN")
cal() { # name, flags...
  local name=$1; shift
  [ -s "$OUT/$name.safetensors" ] || "$LIBRE" -q calibrate --weights "$DNN" --data "$CAL" \
    --fpr 0.05 --out "$OUT/$name.safetensors" "$@" >/dev/null
}
score_of() {
  case "$1" in
    libre|mcd) echo '"feature-variance"' ;; kd) echo '"kd"' ;; kd-bu) echo '"kd-bu"' ;;
    lid) echo '"lid"' ;; maha) echo '"mahalanobis"' ;;
  esac
}
for m in $MODELS; do
  case "$m" in
    libre) ;;
    kd) cal kd --detector kd --fit-data "$FIT" ;;
    kd-bu) cal kd-bu --detector kd-bu --fit-data "$FIT" --dropout conv2,linear1 "${LR[@]}" ;;
    lid) cal lid --detector lid --fit-data "$FIT" "${LR[@]}" ;;
    maha) cal maha --detector mahalanobis --fit-data "$FIT" ;;
    mcd) cal mcd --detector mc-dropout --dropout conv2,linear1 --mc-samples 20 ;;
    *) echo "unknown detector '$m'" >&2; exit 2 ;;
  esac
done
{
  experiment_head "$SET: the strong adaptive suite against every detector" "$DATA:test[0:$N]" 250
  for m in $MODELS; do model "$m" "$OUT/$m.safetensors" "$(score_of "$m")"; done
  # Non-adaptive references beside the suite (AUROC, and their evaded % at the same threshold).
  attack pgd "$EPS" 40 0.01
  # EoT: MC dropout and KD-BU sample masks on every forward; 4 draws per step.
  attack pgd "$EPS" 200 "" 'adaptive = "strong"
params = { eot_samples = 4 }'
} | sed '/^step_size = $/d' >"$OUT/experiment.toml"
"$LIBRE" evaluate "$OUT/experiment.toml" --out "$OUT/report"
