#!/usr/bin/env bash
# A real LiBRe fine-tuning run, libre against PyTorch on the same machine (issue 14): a CIFAR-stem
# ResNet-18 trained here on Fashion-MNIST, then its last block (layer4.1) fine-tuned as a
# 20-member LiBRe ensemble with `libre finetune --recipe libre` defaults (anchored objective,
# members' lr 0.05 cosine to 1e-4, noise e in [0.15, 0.6], blur 0.03, batch norm in training
# mode), and the same run in plain PyTorch (scripts/libre_train_torch.py: the reference's routing,
# `ref`, and a best-effort one, `opt`), interleaved, ROUNDS times each.
#
#   scripts/train_vs_pytorch.sh [OUT_DIR]               (default runs/train-vs-pytorch)
#   DEVICE=cuda LIMIT=60000 scripts/train_vs_pytorch.sh  (a whole epoch on a GPU)
#
# Reports, per side, the training loop's images/s (libre: metrics.csv `images_per_s`, the epoch
# loop without evaluation; PyTorch: the same span) and the test top-1 of the 20-member predictive
# on the first EVAL_LIMIT Fashion-MNIST test images.
#
# Env (defaults in brackets):
#   DEVICE [cpu]          cpu or cuda, both sides
#   PRE_LIMIT [10000], PRE_EPOCHS [1]   the DNN's training (`libre train`, batch 128, lr 0.05,
#                         seed 0), done once and kept in OUT_DIR/pretrained
#   LIMIT [2048]          fine-tuning images (the first LIMIT of the training set); EPOCHS [1]
#   BATCH [128]           clean images per fine-tuning step (2.5x that many routed)
#   EVAL_LIMIT [1000]     test images for the top-1
#   ROUNDS [2]            alternations of [libre, PyTorch ref, PyTorch opt]
#   IMPLS ["ref opt"]     which PyTorch routings to run
#   BENCH_THREADS [2]     intra-op threads of both sides (CPU), OMP_WAIT_POLICY=PASSIVE for both
#   TRAIN_DATA, TEST_DATA libre data files (u8 images, labels) [the cached fashion-mnist splits,
#                         fetched by `libre data fetch fashion-mnist`]
#   LIBRE_BIN [target/release/libre, built here]   BENCH_PY [the venv of bench_vs_pytorch.sh]
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "train_vs_pytorch.sh: $*" >&2; exit 1; }

OUT=${1:-runs/train-vs-pytorch}
DEVICE=${DEVICE:-cpu}
PRE_LIMIT=${PRE_LIMIT:-10000}
PRE_EPOCHS=${PRE_EPOCHS:-1}
LIMIT=${LIMIT:-2048}
EPOCHS=${EPOCHS:-1}
BATCH=${BATCH:-128}
EVAL_LIMIT=${EVAL_LIMIT:-1000}
ROUNDS=${ROUNDS:-2}
IMPLS=${IMPLS:-ref opt}
export BENCH_THREADS=${BENCH_THREADS:-2}
export OMP_NUM_THREADS=$BENCH_THREADS MKL_NUM_THREADS=$BENCH_THREADS OMP_WAIT_POLICY=PASSIVE
export PYTHONDONTWRITEBYTECODE=1
for v in PRE_LIMIT PRE_EPOCHS LIMIT EPOCHS BATCH EVAL_LIMIT ROUNDS BENCH_THREADS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v} is not a positive number"
done
case $DEVICE in cpu | cuda | cuda:[0-9]*) ;; *) die "DEVICE=$DEVICE: cpu or cuda" ;; esac
for i in $IMPLS; do case $i in ref | opt) ;; *) die "IMPLS: ref and/or opt, got $i" ;; esac; done

# The PyTorch side: BENCH_PY, else the venv scripts/bench_vs_pytorch.sh creates (torch 2.11.0).
VENV=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/libre/bench-venv}
if [ -z "${BENCH_PY:-}" ]; then
  [ -x "$VENV/bin/python" ] && [ -f "$VENV/.complete" ] \
    || CASES=lenet5-28:dnn ROUNDS=1 REPS=1 E2E=0 PT_OPT=0 scripts/bench_vs_pytorch.sh >/dev/null \
    || die "could not create the PyTorch venv (scripts/bench_vs_pytorch.sh)"
  BENCH_PY=$VENV/bin/python
fi
"$BENCH_PY" -c 'import torch' || die "$BENCH_PY does not import torch"
if [ -z "${LIBRE_BIN:-}" ]; then
  cargo build --release --bin libre >&2 || die "cargo build --release --bin libre failed"
  LIBRE_BIN=target/release/libre
fi
[ -x "$LIBRE_BIN" ] || die "no libre binary at $LIBRE_BIN"
if [ -z "${TRAIN_DATA:-}" ] || [ -z "${TEST_DATA:-}" ]; then
  "$LIBRE_BIN" data fetch fashion-mnist >&2 || die "libre data fetch fashion-mnist failed"
  cache=${LIBRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libre}
  TRAIN_DATA=${TRAIN_DATA:-$cache/data/fashion-mnist-train.safetensors}
  TEST_DATA=${TEST_DATA:-$cache/data/fashion-mnist-test.safetensors}
fi
[ -s "$TRAIN_DATA" ] && [ -s "$TEST_DATA" ] || die "no data file at $TRAIN_DATA or $TEST_DATA"
mkdir -p "$OUT"
RAW="$OUT/raw.txt"
: >"$RAW"

pre="$OUT/pretrained"
if [ ! -s "$pre/model.safetensors" ]; then
  echo "pre-training the ResNet-18 DNN on $PRE_LIMIT images, $PRE_EPOCHS epoch(s)" >&2
  "$LIBRE_BIN" -q train --model resnet18 --cifar-stem --data "$TRAIN_DATA[0:$PRE_LIMIT]" \
    --epochs "$PRE_EPOCHS" --batch-size 128 --seed 0 --device "$DEVICE" --out "$pre" --force \
    >"$OUT/pretrained.log" || die "libre train failed"
fi
start=$(date +%s)
for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r/$ROUNDS: libre" >&2
  run="$OUT/libre-$r"
  "$LIBRE_BIN" -q finetune --recipe libre --weights "$pre/model.safetensors" \
    --data "$TRAIN_DATA[0:$LIMIT]" --epochs "$EPOCHS" --batch-size "$BATCH" --seed "$r" \
    --eval-data "$TEST_DATA" --eval-limit "$EVAL_LIMIT" --device "$DEVICE" --out "$run" --force \
    >"$run.log" || die "libre finetune failed"
  "$BENCH_PY" - "$run/metrics.csv" >>"$RAW" <<'EOF' || die "could not read libre's metrics.csv"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
secs = sum(float(r["seconds"]) for r in rows)
ips = sum(float(r["images_per_s"]) for r in rows) / len(rows)
print("libre", secs, ips, rows[-1]["eval_top1"])
EOF
  for impl in $IMPLS; do
    echo "round $r/$ROUNDS: PyTorch ($impl)" >&2
    "$BENCH_PY" scripts/libre_train_torch.py "$pre/model.safetensors" "$TRAIN_DATA" "$TEST_DATA" \
      --limit "$LIMIT" --epochs "$EPOCHS" --batch-size "$BATCH" --eval-limit "$EVAL_LIMIT" \
      --impl "$impl" --device "$DEVICE" --seed "$r" >"$OUT/pytorch-$impl-$r.txt" \
      || die "libre_train_torch.py --impl $impl failed"
    awk -v i="$impl" '/^train-e2e:/ { print "pytorch-" i, $2, $3, $4 }' "$OUT/pytorch-$impl-$r.txt" >>"$RAW"
  done
done
elapsed=$(($(date +%s) - start))

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
gpu=""
[ "$DEVICE" != cpu ] && gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
echo
echo "LiBRe fine-tuning, ResNet-18 (CIFAR stem) on Fashion-MNIST: libre vs PyTorch $("$BENCH_PY" -c 'import torch; print(torch.__version__)')"
echo "machine: ${cpu:-unknown CPU}, nproc $(nproc)${gpu:+, GPU $gpu}; device $DEVICE; threads $BENCH_THREADS; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "run: $LIMIT images x $EPOCHS epoch(s), batch $BATCH (2.5x routed), S = 20, from a DNN trained on $PRE_LIMIT images x $PRE_EPOCHS epoch(s); $ROUNDS rounds interleaved, ${elapsed} s"
"$BENCH_PY" - "$RAW" <<'EOF'
import statistics, sys
from collections import defaultdict
ips, top = defaultdict(list), defaultdict(list)
for line in open(sys.argv[1]):
    side, secs, rate, top1 = line.split()
    ips[side].append(float(rate))
    top[side].append(float(top1))
hdr = f"{'side':<14} {'images/s max':>12} {'median':>8} {'libre/side (median)':>19}  test top-1 (per round)"
print(hdr)
print("-" * len(hdr))
lib = statistics.median(ips["libre"])
for side in ips:
    m = statistics.median(ips[side])
    print(f"{side:<14} {max(ips[side]):>12.1f} {m:>8.1f} {lib / m:>19.2f}x  "
          + " ".join(f"{t:.4f}" for t in top[side]))
print("pytorch-ref: the reference's routing (a gathered weight per image, an N-group conv);"
      " pytorch-opt: images sorted by member, one conv per member (scripts/libre_train_torch.py)")
EOF
