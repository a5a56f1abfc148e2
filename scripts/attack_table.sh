#!/usr/bin/env bash
# Robust accuracy of advertorch's LeNet5 pair on the MNIST test set under FGSM/BIM/PGD/MIM/CW at
# eps 0.1 and 0.3 (iterative attacks: 40 steps of 0.01, advertorch's MNIST setting).
# Usage: scripts/attack_table.sh [N_IMAGES]   (prints a markdown table)
set -euo pipefail
N="${1:-1000}"
BIN="${LIBRE_BIN:-target/release/libre}"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
echo "| model | attack | eps | clean acc | robust acc | ms/image |"
echo "|---|---|---|---|---|---|"
for model in lenet5-mnist lenet5-mnist-adv; do
  for eps in 0.1 0.3; do
    for attack in fgsm bim pgd mim cw; do
      extra=()
      [ "$attack" != fgsm ] && extra=(--steps 40 --step-size 0.01)
      "$BIN" --json --quiet attack --weights "zoo:$model" --data mnist:test --limit "$N" \
        --attack "$attack" --eps "$eps" "${extra[@]}" --device cpu --out "$TMP/a.safetensors" \
        | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin)['data']; print(f\"| $model | $attack | $eps | {100*d['clean_accuracy']:.2f}% | {100*d['robust_accuracy']:.2f}% | {d['time_per_image_ms']:.1f} |\")"
    done
  done
done
