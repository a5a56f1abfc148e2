#!/usr/bin/env bash
# Classic detectors next to LiBRe and the DNN's msp (docs/results.md, "Baselines"):
#
#   scripts/baselines_study.sh mnist   [OUT]   zoo LeNet5 + the LiBRe model of the MNIST study
#   scripts/baselines_study.sh fashion [OUT]   the Fashion-MNIST LeNet5 and LiBRe model of
#                                              scripts/fashion_libre.sh
#
# Images (disjoint): fit the densities / Gaussians / LID reference on train[0:10000]; the
# logistic regressions on FGSM (eps 0.3) examples of train[50000:51000] vs those clean images
# (the "seen" attack; every other attack is unseen); choose Mahalanobis' noise magnitude on
# validation: FGSM examples of train[51000:51500] vs clean train[56000:56500]; calibrate on
# train[55000:60000]; test on the first 500 test images. Nothing is chosen on test images.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/experiment.sh
SET=${1:?usage: baselines_study.sh mnist|fashion [OUT]}
LIBRE=${LIBRE:-target/release/libre}
case "$SET" in
  mnist) DATA=mnist; DNN=zoo:lenet5-mnist
         LIBRE_W=${LIBRE_WEIGHTS:-runs/libre-study/anchored-lr05/run/model.safetensors} ;;
  fashion) DATA=fashion-mnist; DNN=runs/fashion-libre/dnn/model.safetensors
         LIBRE_W=${LIBRE_WEIGHTS:-runs/fashion-libre/libre/model.safetensors} ;;
  *) echo "unknown set '$SET' (mnist or fashion)" >&2; exit 2 ;;
esac
OUT=${2:-runs/baselines-$SET}
mkdir -p "$OUT"
for f in "$LIBRE_W" "$DNN"; do
  [[ "$f" == zoo:* || -e "$f" ]] || { echo "missing $f (see the header)" >&2; exit 2; }
done
FIT="$DATA:train[0:10000]" CAL="$DATA:train[55000:60000]"
LRCLEAN="$DATA:train[50000:51000]" VALADV_SRC="$DATA:train[51000:51500]" VALCLEAN="$DATA:train[56000:56500]"
adv() { [ -s "$2" ] || "$LIBRE" -q attack --weights "$DNN" --data "$1" --attack fgsm --eps 0.3 --out "$2" >/dev/null; }
adv "$LRCLEAN" "$OUT/fit-fgsm.safetensors"
adv "$VALADV_SRC" "$OUT/val-fgsm.safetensors"
LR=(--fit-adversarial "$OUT/fit-fgsm.safetensors" --fit-clean "$LRCLEAN")
cal() { # name, flags...
  local name=$1; shift
  [ -s "$OUT/$name.safetensors" ] || "$LIBRE" -q calibrate --weights "$DNN" --data "$CAL" \
    --out "$OUT/$name.safetensors" "$@" >/dev/null
}
# AUROC of a detector on the validation pair (clean = label 0, adversarial = label 1).
val_auroc() {
  local det=$1 tmp
  tmp=$(mktemp -d)
  "$LIBRE" -q detect "$VALCLEAN" --weights "$det" --out "$tmp/c.csv"
  "$LIBRE" -q detect "$OUT/val-fgsm.safetensors" --weights "$det" --out "$tmp/a.csv"
  { echo "label,score"; tail -n +2 "$tmp/c.csv" | cut -d, -f5 | sed 's/^/0,/';
    tail -n +2 "$tmp/a.csv" | cut -d, -f5 | sed 's/^/1,/'; } >"$tmp/s.csv"
  "$LIBRE" --json metrics --scores "$tmp/s.csv" | tail -1 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["auroc"])'
  rm -rf "$tmp"
}
# Mahalanobis noise magnitude (Lee et al.'s grid) on validation data, for the ensemble form.
if [ ! -s "$OUT/maha-noise.txt" ]; then
  best="" bestv=-1
  for n in 0 0.0005 0.001 0.0014 0.002 0.005 0.01; do
    cal "maha-lr-n$n" --detector mahalanobis --fit-data "$FIT" "${LR[@]}" --noise "$n"
    v=$(val_auroc "$OUT/maha-lr-n$n.safetensors")
    echo "noise $n validation AUROC $v" | tee -a "$OUT/maha-noise.log"
    if python3 -c "import sys; sys.exit(0 if $v > $bestv else 1)"; then best=$n bestv=$v; fi
  done
  echo "$best" >"$OUT/maha-noise.txt"
fi
NOISE=$(cat "$OUT/maha-noise.txt")
cp -n "$OUT/maha-lr-n$NOISE.safetensors" "$OUT/maha-lr.safetensors"
cal kd --detector kd --fit-data "$FIT"
cal kd-bu --detector kd-bu --fit-data "$FIT" --dropout conv2,linear1 "${LR[@]}"
cal lid --detector lid --fit-data "$FIT" "${LR[@]}"
cal maha --detector mahalanobis --fit-data "$FIT"
cal mcd --detector mc-dropout --dropout conv2,linear1 --mc-samples 20
{
  cat <<TOML
title = "$SET: classic detectors vs LiBRe vs DNN msp (LR forms trained on FGSM 0.3 = seen)"
data = "$DATA:test[0:500]"
seed = 0
subset = "all"
bootstrap = 200
batch_size = 250
TOML
  model dnn "$DNN" '"msp", "entropy", "max-logit"'
  model libre "$LIBRE_W" '"feature-variance", "softmax-variance", "mutual-information", "msp"'
  for m in kd:kd kd-bu:kd-bu lid:lid maha:mahalanobis maha-lr:mahalanobis; do
    model "${m%%:*}" "$OUT/${m%%:*}.safetensors" "\"${m#*:}\""
  done
  model mc-dropout "$OUT/mcd.safetensors" '"feature-variance", "softmax-variance", "mutual-information"'
  attack fgsm "0.1, 0.3"
  for a in bim pgd; do attack "$a" "0.1, 0.3" 40 0.01; done
  attack mim "0.1, 0.3" 40 0.01 'params = { decay = 1.0 }'
  attack cw "0.1, 0.3" 40 0.01
} >"$OUT/experiment.toml"
"$LIBRE" evaluate "$OUT/experiment.toml" --out "$OUT/report"
