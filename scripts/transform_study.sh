#!/usr/bin/env bash
# The input-transformation detectors on MNIST (docs/results.md, "Baselines"): feature squeezing
# (Xu et al., NDSS 2018: 1-bit depth + 2x2 median, max softmax L1 distance) and MagNet (Meng and
# Chen, CCS 2017: the paper's MNIST autoencoders; detectors I (L2) and II (L1), their union; the
# reformer as a separate model), on the zoo LeNet5.
#
#   scripts/transform_study.sh [OUT]               both parts
#   PART=plain scripts/transform_study.sh          only the non-adaptive attacks (FGSM, PGD, CW)
#   PART=adaptive N=200 STEPS=100 scripts/...      only the strong adaptive suite, first N images
#   DATASET=fashion-mnist DNN=runs/fashion-libre/dnn/model.safetensors EPS="0.1, 0.2" \
#     scripts/transform_study.sh runs/transform-fashion      the same on Fashion-MNIST
#                                  (the LeNet5 of scripts/fashion_libre.sh, nothing retuned)
#
# Images (disjoint, nothing chosen on test images): MagNet's autoencoders trained on
# train[0:9000] (libre's defaults: 20 epochs, Adam 0.01), its normalisers on train[9000:10000];
# every detector calibrated at 5% FPR on train[55000:60000]; tested on the first N test digits
# (default 500). Non-adaptive: FGSM, PGD and CW (l_inf, 40 steps of 0.01) at eps 0.1 and 0.3.
# Adaptive: `adaptive = "strong"` on PGD at EPS (default 0.3) (pgd-restarts, mimicry C = 10/100/1000,
# selective, orthogonal; squeezing's rounding and median by BPDA, MagNet through its
# autoencoders), STEPS steps (default 100) of eps/10 halved each quarter, one restart, early stop.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/experiment.sh
LIBRE=${LIBRE:-target/release/libre}
OUT=${1:-runs/transform-mnist}
N=${N:-500}
STEPS=${STEPS:-100}
PART=${PART:-all}
EPS=${EPS:-0.3}
DATASET=${DATASET:-mnist}
DNN=${DNN:-zoo:lenet5-mnist}
FIT="$DATASET:train[0:10000]" CAL="$DATASET:train[55000:60000]"
mkdir -p "$OUT"
cal() { # name, flags...
  local name=$1; shift
  [ -s "$OUT/$name.safetensors" ] || "$LIBRE" calibrate --weights "$DNN" --data "$CAL" \
    --fpr 0.05 --out "$OUT/$name.safetensors" "$@" 2>&1 | grep -v '^device' | tee -a "$OUT/fit.log"
}
cal squeeze --detector squeeze
cal magnet --detector magnet --fit-data "$FIT"
# The same autoencoders (same seed and data), the classifier seeing AE I's reconstruction.
cal magnet-reformer --detector magnet --fit-data "$FIT" --reformer
models() {
  model squeeze "$OUT/squeeze.safetensors" '"squeeze"'
  model magnet "$OUT/magnet.safetensors" \
    '"magnet", "magnet-l2", "magnet-l1", "magnet-jsd10", "magnet-jsd40"'
  model magnet-reformer "$OUT/magnet-reformer.safetensors" '"magnet"'
}
header() {
  printf 'title = "%s"\ndata = "'"$DATASET"':test[0:%s]"\nseed = 0\nsubset = "all"\nbootstrap = 200\nbatch_size = 250\n' "$1" "$N"
}
if [ "$PART" = all ] || [ "$PART" = plain ]; then
  {
    header "$DATASET: feature squeezing and MagNet, non-adaptive"
    models
    attack fgsm "0.1, 0.3"
    attack pgd "0.1, 0.3" 40 0.01
    attack cw "0.1, 0.3" 40 0.01
  } >"$OUT/plain.toml"
  /usr/bin/time -v "$LIBRE" evaluate "$OUT/plain.toml" --out "$OUT/plain" 2>"$OUT/plain.time" |
    tee "$OUT/plain.txt"
fi
if [ "$PART" = all ] || [ "$PART" = adaptive ]; then
  {
    header "$DATASET: feature squeezing and MagNet under the strong adaptive suite ($STEPS steps)"
    models
    attack pgd "$EPS" 40 0.01
    printf '\n[[attack]]\nname = "pgd"\neps = [%s]\nadaptive = "strong"\nsteps = %s\nparams = { restarts = 1 }\n' "$EPS" "$STEPS"
  } >"$OUT/adaptive.toml"
  /usr/bin/time -v "$LIBRE" evaluate "$OUT/adaptive.toml" --out "$OUT/adaptive" \
    2>"$OUT/adaptive.time" | tee "$OUT/adaptive.txt"
fi
