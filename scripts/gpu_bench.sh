#!/usr/bin/env bash
# Issue 14's GPU comparison in one command, for a lent GPU machine (docs/design.md section 13:
# PyTorch 2.11 for CUDA installed there, no Rust toolchain, no network). Build here first:
#
#   cargo build --release --example bench_vs_pytorch
#   device `run`: carry ["target/release/examples/bench_vs_pytorch"], command scripts/gpu_bench.sh
#
# For each shape of the reference's H200 timings (ResNet-50 batch 32 and 128 at 224 px, batch 256
# at 32 px) it runs scripts/bench_vs_pytorch.sh on the GPU: the DNN, the last block as a 20-member
# ensemble (LiBRe) and as mean-field, libre and PyTorch (reference style and best-effort)
# interleaved, cuDNN autotuner on for both (as the reference's timings), at each precision of
# PRECISIONS (fp32 as the reference, then bf16 on both sides). Tables go to stdout and
# $OUT/gpu_bench.txt, every timed forward to $OUT/raw-*.txt ($OUT: the device tool's output
# folder; ./gpu-bench-out elsewhere).
#
# Env: BENCH_PY [/opt/torch/.venv/bin/python], BENCH_BIN [target/release/examples/bench_vs_pytorch],
#      BENCH_DEVICE [cuda], ROUNDS [3], REPS [20] timed forwards per process, BENCH_WARMUP [5],
#      SHAPES ["32:resnet50-224 128:resnet50-224 256:resnet50-32"] (BATCH:NET-SIZE),
#      VARIANTS ["dnn ens-last mf-last"], PRECISIONS ["f32 bf16"].
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "gpu_bench.sh: $*" >&2; exit 1; }

export BENCH_PY=${BENCH_PY:-/opt/torch/.venv/bin/python}
export BENCH_BIN=${BENCH_BIN:-target/release/examples/bench_vs_pytorch}
[ -x "$BENCH_PY" ] || die "no Python at $BENCH_PY (set BENCH_PY)"
[ -x "$BENCH_BIN" ] || die "no $BENCH_BIN: build it here and carry it (see the header)"
# The binary's rpath points at the build machine's libtorch; the GPU machine's own torch/lib wins.
torch_lib=$("$BENCH_PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
  || die "$BENCH_PY does not import torch"
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BENCH_DEVICE=${BENCH_DEVICE:-cuda} BENCH_CUDNN_BENCHMARK=1 E2E=0 PT_OPT=all
export ROUNDS=${ROUNDS:-3} REPS=${REPS:-20} BENCH_WARMUP=${BENCH_WARMUP:-5}
export SLOW_REPS=$REPS
SHAPES=${SHAPES:-32:resnet50-224 128:resnet50-224 256:resnet50-32}
VARIANTS=${VARIANTS:-dnn ens-last mf-last}
PRECISIONS=${PRECISIONS:-f32 bf16}
OUTDIR=${OUT:-$PWD/gpu-bench-out}
mkdir -p "$OUTDIR"
: >"$OUTDIR/gpu_bench.txt"
for precision in $PRECISIONS; do
  for spec in $SHAPES; do
    batch=${spec%%:*} net=${spec#*:}
    cases=$(for v in $VARIANTS; do printf '%s:%s ' "$net" "$v"; done)
    echo "== $net, batch $batch, $precision" | tee -a "$OUTDIR/gpu_bench.txt"
    BENCH_PRECISION=$precision BATCH=$batch CASES=$cases \
      RAW_OUT="$OUTDIR/raw-$net-b$batch-$precision.txt" scripts/bench_vs_pytorch.sh \
      | tee -a "$OUTDIR/gpu_bench.txt" \
      || die "bench_vs_pytorch.sh failed on $net batch $batch $precision"
  done
done
