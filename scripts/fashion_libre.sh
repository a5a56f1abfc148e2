#!/usr/bin/env bash
# LiBRe on Fashion-MNIST (docs/results.md): a LeNet5 pre-trained here, LiBRe with the configuration
# selected on MNIST validation data (anchored objective, members' lr 0.05; no choice made on
# Fashion-MNIST), its alpha = 0 ablation, and `libre evaluate` on the first 1000 test images.
#
#   scripts/fashion_libre.sh [OUT_DIR]        (default runs/fashion-libre)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fashion-libre}
LIBRE=${LIBRE:-target/release/libre}
DEV=${DEVICE:-cpu}
TRAIN='fashion-mnist:train[0:50000]'
mkdir -p "$OUT"
[ -s "$OUT/dnn/model.safetensors" ] || "$LIBRE" train --model lenet5 --data "$TRAIN" --epochs 3 \
  --seed 0 --out "$OUT/dnn" --device "$DEV"
for cfg in "libre|" "alpha0|--alpha 0"; do
  name=${cfg%%|*} flags=${cfg#*|}
  # shellcheck disable=SC2086
  [ -s "$OUT/$name/model.safetensors" ] || "$LIBRE" finetune --recipe libre \
    --weights "$OUT/dnn/model.safetensors" --data "$TRAIN" --epochs 2 --seed 0 \
    --out "$OUT/$name" --device "$DEV" $flags
done
cat > "$OUT/experiment.toml" <<TOML
title = "Fashion-MNIST: LeNet5 (DNN) vs LiBRe (linear1, 20 members) vs its alpha = 0 ablation"
data = "fashion-mnist:test[0:1000]"
seed = 0
bootstrap = 200
[[model]]
name = "dnn"
weights = "$OUT/dnn/model.safetensors"
scores = ["msp", "entropy"]
[[model]]
name = "libre"
weights = "$OUT/libre/model.safetensors"
scores = ["feature-variance", "softmax-variance", "mutual-information"]
[[model]]
name = "alpha0"
weights = "$OUT/alpha0/model.safetensors"
scores = ["feature-variance", "softmax-variance", "mutual-information"]
[[attack]]
name = "fgsm"
eps = [0.1, 0.3]
[[attack]]
name = "bim"
eps = [0.3]
steps = 40
step_size = 0.01
[[attack]]
name = "pgd"
eps = [0.1, 0.3]
steps = 40
step_size = 0.01
[[attack]]
name = "mim"
eps = [0.3]
steps = 40
step_size = 0.01
[[attack]]
name = "cw"
eps = [0.3]
steps = 40
step_size = 0.01
TOML
"$LIBRE" evaluate "$OUT/experiment.toml" --out "$OUT/report" --device "$DEV"
