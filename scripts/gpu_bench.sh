#!/usr/bin/env bash
# Issue 14's GPU comparison, for a lent GPU machine (docs/design.md section 13: PyTorch 2.11 for
# CUDA installed there, no Rust toolchain, no network). Prepare here first:
#
#   make gpu-carry      builds the two binaries and gzips the Fashion-MNIST files into gpu-carry/
#   device `run`: carry ["target/release/examples/bench_vs_pytorch", "target/release/libre",
#                        "gpu-carry"], command `scripts/gpu_bench.sh`, timeout_s 600
#
# The device time of a session is short (15 minutes, start-up included), so the work comes in
# PHASES of a few minutes each (estimates, not measured on a GPU yet: forward ~5 min with its 40
# processes, train ~2, e2e ~5). All three may not fit one 600 s call: run
# `PHASES="forward train" scripts/gpu_bench.sh` first, then `PHASES=e2e E2E_LIMIT=30000 ...`
# with what is left:
#   forward  scripts/bench_vs_pytorch.sh on the GPU for each shape of the reference's H200 anchors
#            (ResNet-50 224 px, batch 32 and 128): the DNN and the last block as a 20-member
#            ensemble (LiBRe), libre and PyTorch (reference style and best-effort) interleaved,
#            cuDNN autotuner on for both (as the anchors), at each precision of PRECISIONS;
#   train    one LiBRe training step against the DNN's (ResNet-50 224 px, batch 64: the anchor's
#            81.2 vs 32.1 ms), f32;
#   e2e      scripts/train_vs_pytorch.sh: a ResNet-18 trained on all of Fashion-MNIST, then one
#            epoch of LiBRe fine-tuning in libre and in PyTorch, images/s and test top-1 (needs
#            gpu-carry/fashion-mnist-{train,test}.safetensors.gz).
# Tables go to stdout and $OUT/gpu_bench.txt, every timed unit to $OUT/raw-*.txt ($OUT: the device
# tool's output folder; ./gpu-bench-out elsewhere).
#
# Dry run of all three phases on a CPU (small shapes, ~7 minutes on 2 cores):
#   BENCH_PY=~/.cache/libre/bench-venv/bin/python BENCH_DEVICE=cpu ROUNDS=1 REPS=1 BENCH_WARMUP=0 \
#     SHAPES=2:lenet5-28 PRECISIONS=f32 TRAIN_SHAPES=4:resnet18c1-28 E2E_LIMIT=256 \
#     E2E_PRE_EPOCHS=1 OUT=/tmp/gb scripts/gpu_bench.sh
#
# Env: BENCH_PY [/opt/torch/.venv/bin/python], BENCH_BIN [target/release/examples/bench_vs_pytorch],
#      LIBRE_BIN [target/release/libre], GPU_DATA [gpu-carry], BENCH_DEVICE [cuda] (every phase),
#      ROUNDS [2],
#      REPS [20] timed units per process, BENCH_WARMUP [5], PHASES ["forward train e2e"],
#      SHAPES ["32:resnet50-224 128:resnet50-224"] (BATCH:NET-SIZE), VARIANTS ["dnn ens-last"],
#      PRECISIONS ["f32 bf16"], TRAIN_SHAPES ["64:resnet50-224"], E2E_LIMIT [60000],
#      E2E_PRE_EPOCHS [2].
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "gpu_bench.sh: $*" >&2; exit 1; }
# The e2e phase unzips the data into a temp folder; remove it however the script ends.
tmp=
trap 'if [ -n "$tmp" ]; then rm -rf "$tmp"; fi' EXIT

export BENCH_PY=${BENCH_PY:-/opt/torch/.venv/bin/python}
export BENCH_BIN=${BENCH_BIN:-target/release/examples/bench_vs_pytorch}
LIBRE_BIN=${LIBRE_BIN:-target/release/libre}
GPU_DATA=${GPU_DATA:-gpu-carry}
PHASES=${PHASES:-forward train e2e}
[ -x "$BENCH_PY" ] || die "no Python at $BENCH_PY (set BENCH_PY)"
for p in $PHASES; do
  case $p in
    forward | train) [ -x "$BENCH_BIN" ] || die "no $BENCH_BIN: build it here and carry it (see the header)" ;;
    e2e) [ -x "$LIBRE_BIN" ] || die "no $LIBRE_BIN: build it here and carry it (see the header)" ;;
    *) die "PHASES: forward, train and/or e2e, got $p" ;;
  esac
done
# The binaries' rpath points at the build machine's libtorch; the GPU machine's own torch/lib wins.
torch_lib=$("$BENCH_PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
  || die "$BENCH_PY does not import torch"
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BENCH_DEVICE=${BENCH_DEVICE:-cuda} BENCH_CUDNN_BENCHMARK=1 E2E=0 PT_OPT=all
export ROUNDS=${ROUNDS:-2} REPS=${REPS:-20} BENCH_WARMUP=${BENCH_WARMUP:-5}
export SLOW_REPS=$REPS TRAIN_REPS=$REPS
SHAPES=${SHAPES:-32:resnet50-224 128:resnet50-224}
VARIANTS=${VARIANTS:-dnn ens-last}
PRECISIONS=${PRECISIONS:-f32 bf16}
TRAIN_SHAPES=${TRAIN_SHAPES:-64:resnet50-224}
OUTDIR=${OUT:-$PWD/gpu-bench-out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_bench.txt"
: >"$LOG"

for phase in $PHASES; do
  case $phase in
    forward)
      for precision in $PRECISIONS; do
        for spec in $SHAPES; do
          batch=${spec%%:*} net=${spec#*:}
          cases=$(for v in $VARIANTS; do printf '%s:%s ' "$net" "$v"; done)
          echo "== forward: $net, batch $batch, $precision" | tee -a "$LOG"
          BENCH_PRECISION=$precision BATCH=$batch CASES=$cases \
            RAW_OUT="$OUTDIR/raw-$net-b$batch-$precision.txt" scripts/bench_vs_pytorch.sh \
            | tee -a "$LOG" || die "bench_vs_pytorch.sh failed on $net batch $batch $precision"
        done
      done
      ;;
    train)
      for spec in $TRAIN_SHAPES; do
        batch=${spec%%:*} net=${spec#*:}
        echo "== training step: $net, batch $batch, f32" | tee -a "$LOG"
        BENCH_PRECISION=f32 TRAIN_BATCH=$batch CASES="$net:dnn-train $net:ens-last-train" \
          RAW_OUT="$OUTDIR/raw-$net-train-b$batch.txt" scripts/bench_vs_pytorch.sh \
          | tee -a "$LOG" || die "bench_vs_pytorch.sh failed on the training steps of $net"
      done
      ;;
    e2e)
      tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bench.XXXXXX")
      for split in train test; do
        src="$GPU_DATA/fashion-mnist-$split.safetensors.gz"
        [ -s "$src" ] || die "no $src (make gpu-carry, and carry gpu-carry)"
        gunzip -c "$src" >"$tmp/fashion-mnist-$split.safetensors" || die "gunzip $src failed"
      done
      echo "== e2e: LiBRe fine-tuning of a Fashion-MNIST ResNet-18" | tee -a "$LOG"
      DEVICE=$BENCH_DEVICE LIBRE_BIN=$LIBRE_BIN TRAIN_DATA="$tmp/fashion-mnist-train.safetensors" \
        TEST_DATA="$tmp/fashion-mnist-test.safetensors" LIMIT=${E2E_LIMIT:-60000} \
        PRE_LIMIT=${E2E_LIMIT:-60000} PRE_EPOCHS=${E2E_PRE_EPOCHS:-2} ROUNDS=$ROUNDS \
        scripts/train_vs_pytorch.sh "$OUTDIR/e2e" | tee -a "$LOG" \
        || die "train_vs_pytorch.sh failed"
      # Keep the logs, metrics and configs; checkpoints (a 20-member ResNet-18 is 0.4 GB) stay.
      rm -rf "$tmp"
      tmp=
      find "$OUTDIR/e2e" \( -name '*.safetensors' -o -name epochs -o -name last \) -prune \
        -exec rm -rf {} +
      ;;
  esac
done
