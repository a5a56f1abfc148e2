#!/usr/bin/env bash
# Issue "training pipelines": pre-train a LeNet5-shaped CNN on Fashion-MNIST (MAP, weight decay
# 5e-4), fine-tune it as a mean-field BNN for one epoch (BayesAdapter, prior with the same λ), and
# compare DNN and 20-sample BNN on the 10k test set. CPU-sized (2 cores).
# Usage: scripts/fashion_experiment.sh [RUNS_DIR] [PRETRAIN_EPOCHS]
set -euo pipefail
R="${1:-runs/fashion}"; E="${2:-3}"
BIN="${LIBRE_BIN:-target/release/libre}"
mkdir -p "$R"
t() { /usr/bin/time -f "%e" -o "$R/.t" "$@" >/dev/null; cat "$R/.t"; }
s1=$(t "$BIN" --quiet train --model lenet5 --data fashion-mnist:train --epochs "$E" --lr 0.05 --decay 5e-4 \
  --batch-size 128 --seed 1 --device cpu --out "$R/dnn")
s2=$(t "$BIN" --quiet finetune --weights "$R/dnn/model.safetensors" --posterior mean-field --layers all \
  --data fashion-mnist:train --epochs 1 --decay 5e-4 --sampling local-reparam --mc-samples 20 --seed 1 \
  --device cpu --out "$R/bnn")
"$BIN" --json --quiet eval --weights "$R/dnn/model.safetensors" --data fashion-mnist:test --device cpu | tail -1 > "$R/eval_dnn.json"
"$BIN" --json --quiet eval --weights "$R/bnn/model.safetensors" --data fashion-mnist:test --curve --device cpu | tail -1 > "$R/eval_bnn.json"
python3 - "$R" "$s1" "$s2" <<'PY'
import json, sys
r, s1, s2 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
d = json.load(open(f"{r}/eval_dnn.json"))["data"]; b = json.load(open(f"{r}/eval_bnn.json"))["data"]
print("| model | top-1 | NLL | ECE | Brier | step time |")
print("|---|---|---|---|---|---|")
print(f"| DNN (MAP) | {100*d['top1']:.2f}% | {d['nll']:.4f} | {d['ece']:.4f} | {d['brier']:.4f} | pre-training {s1:.0f} s, eval {d['seconds']:.1f} s |")
print(f"| BNN ({b['mode']}) | {100*b['top1']:.2f}% | {b['nll']:.4f} | {b['ece']:.4f} | {b['brier']:.4f} | fine-tuning {s2:.0f} s, eval {b['seconds']:.1f} s |")
print()
print("| S | top-1 | NLL |"); print("|---|---|---|")
for c in b["curve"]: print(f"| {c['samples']} | {100*c['top1']:.2f}% | {c['nll']:.4f} |")
PY
