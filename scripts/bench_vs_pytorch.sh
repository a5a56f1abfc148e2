#!/usr/bin/env bash
# libre against PyTorch 2.11 (eager, CPU) on the same machine, interleaved: for every case, ROUNDS
# rounds of [libre process, PyTorch process(es)], each process = warm-up + REPS timed forwards
# (examples/bench_vs_pytorch.rs and scripts/bench_vs_pytorch.py; the cases are described there).
#
#   scripts/bench_vs_pytorch.sh
#   CASES='resnet50-32:dnn resnet50-32:ens-last' ROUNDS=5 REPS=10 scripts/bench_vs_pytorch.sh
#   CASES=all scripts/bench_vs_pytorch.sh           every case, including the slow ones
#   CASES=none E2E=0 ATTACK=1 scripts/bench_vs_pytorch.sh   the adaptive-attack cases alone
#
# Env (defaults in brackets):
#   CASES          cases to run [the DEFAULT_CASES below]; `all` adds resnet50-224:mf-all and
#                  the sequential whole-net cases (*:mf-all-seq); `none`: no forward case
#   ROUNDS [3]     alternations per case; REPS [5] timed forwards per process
#   SLOW_REPS [1]  timed forwards per process for the slow cases: 224 px, and mean-field
#                  ResNets (mf-*; drawing 20 weight samples costs seconds)
#   BENCH_WARMUP [1]  untimed forwards per process before the timed ones
#   BATCH [16]     batch size of the forward cases
#   TRAIN_BATCH [64]  clean images per step of the training cases (*-train: one optimiser step
#                  per timed unit; LiBRe routes 2.5x as many images)
#   TRAIN_REPS [2] timed steps per process for the training cases
#   BENCH_THREADS [2]  intra-op threads of both sides (also OMP_NUM_THREADS, MKL_NUM_THREADS)
#   WAIT_POLICY [PASSIVE]  OMP_WAIT_POLICY of both sides; `default` leaves it unset (libgomp
#                  then busy-waits between parallel regions, see docs/design.md section 13)
#   PT_OPT [1]     also run the best-effort PyTorch implementation of the last-block cases
#                  (ens-last, mf-last) below 224 px; `all`: at 224 px too; 0: never
#   E2E [1]        end-to-end: `libre eval` against a PyTorch loop on the 10,000 MNIST test
#                  digits, zoo LeNet5 as a DNN and with linear1 as a 20-member ensemble
#   ATTACK [0]     1: the adaptive-attack cases (issue 25), examples/bench_attack.rs against
#                  `bench_vs_pytorch.py --attack`: LeNet5 with linear1 a 20-member ensemble,
#                  L_inf eps 0.3, step 0.01, the first ATTACK_IMAGES MNIST test digits as one batch
#   ATTACK_CASES [step]  `step`: one mimicry step (forward + backward through the 20-member
#                  predictive and the feature-variance score), libre's Adaptive engine vs a
#                  PyTorch eager loop (--impl ref and opt), ATTACK_STEPS steps per process, time
#                  per step; `full`: libre's whole `selective` attack (ATTACK_FULL_STEPS steps,
#                  early stop, the detector's threshold) vs the same `selective` written in
#                  PyTorch with the same early stop and threshold (like for like), and vs PyTorch
#                  PGD-ATTACK_FULL_STEPS (--impl opt, no early stop: what a user would otherwise
#                  run) on ATTACK_FULL_IMAGES digits; `step full`: both
#   ATTACK_WEIGHTS a LeNet5 checkpoint or LiBRe detector file with linear1 an ensemble [the zoo
#                  LeNet5 converted as for E2E; without a calibrated threshold `selective` uses
#                  the 5% FPR threshold of the attacked images' clean scores]
#   ATTACK_IMAGES [512]  ATTACK_STEPS [5]  ATTACK_FULL_IMAGES [512]  ATTACK_FULL_STEPS [200]
#   PT_MALLOC [0]  1: run PyTorch with the glibc allocator thresholds the libre binary sets for
#                  itself (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 1 GiB, src/runtime/alloc.rs),
#                  so the comparison isolates the rest; 0: PyTorch as users run it. The libre side
#                  always has them unless LIBRE_MALLOC_TUNING=0 is exported
#   CHECK [0]      1: first check that the PyTorch implementations agree (--check, ~2 minutes)
#   BENCH_VENV     [${XDG_CACHE_HOME:-$HOME/.cache}/libre/bench-venv], created once with
#                  torch==2.11.0, torchvision==0.26.0 and numpy from PyPI (~4.7 GB; the PyPI
#                  wheel is the CUDA build, run on the CPU here)
#   BENCH_DEVICE [cpu]  cpu, cuda or cuda:N for both sides (forward cases only; E2E is CPU)
#   BENCH_PRECISION [f32]  f32 or bf16 for both sides' forward and attack cases (libre:
#                  set_precision; PyTorch: model and input cast to bfloat16, outputs to float32);
#                  E2E stays f32
#   ATTACK_LIBRE_PRECISION [BENCH_PRECISION]  the libre side's precision in the attack cases only:
#                  bf16 here with BENCH_PRECISION=f32 times a bf16 libre attack against the f32
#                  PyTorch loop a user would otherwise run, in the same interleaved run
#   BENCH_PY       a Python with torch 2.11 to use instead of the venv (nothing is installed),
#                  e.g. /opt/torch/.venv/bin/python on the lent GPU machines
#   BENCH_BIN      a built examples/bench_vs_pytorch to use instead of building one (no cargo:
#                  the GPU machines have no Rust toolchain; scripts/gpu_bench.sh sets both)
#   RAW_OUT        a file to keep every timed forward in (`side case ms` lines); not kept otherwise
#
# Writes nothing into the repository except target/ (cargo); temporary files go to $TMPDIR.
# Exits non-zero, saying which step failed, when any build or run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DEFAULT_CASES="lenet5-28:dnn lenet5-28:ens-last lenet5-28:mf-last lenet5-28:mf-all
resnet18-32:dnn resnet18-32:ens-last resnet18-32:mf-last resnet18-32:mf-all
resnet50-32:dnn resnet50-32:ens-last resnet50-32:mf-last resnet50-32:mf-all
resnet50-224:dnn resnet50-224:ens-last resnet50-224:mf-last
resnet18c1-28:dnn-train resnet18c1-28:ens-last-train"
ALL_EXTRA="lenet5-28:mf-all-seq resnet18-32:mf-all-seq resnet50-32:mf-all-seq resnet50-224:mf-all"

CASES=${CASES:-$DEFAULT_CASES}
[ "$CASES" = all ] && CASES="$DEFAULT_CASES $ALL_EXTRA"
[ "$CASES" = none ] && CASES=""
ATTACK=${ATTACK:-0}
ATTACK_CASES=${ATTACK_CASES:-step}
ATTACK_IMAGES=${ATTACK_IMAGES:-512}
ATTACK_STEPS=${ATTACK_STEPS:-5}
ATTACK_FULL_IMAGES=${ATTACK_FULL_IMAGES:-512}
ATTACK_FULL_STEPS=${ATTACK_FULL_STEPS:-200}
ATTACK_LIBRE_PRECISION=${ATTACK_LIBRE_PRECISION:-${BENCH_PRECISION:-f32}}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-5}
SLOW_REPS=${SLOW_REPS:-1}
BATCH=${BATCH:-16}
TRAIN_BATCH=${TRAIN_BATCH:-64}
TRAIN_REPS=${TRAIN_REPS:-2}
PT_OPT=${PT_OPT:-1}
E2E=${E2E:-1}
PT_MALLOC=${PT_MALLOC:-0}
CHECK=${CHECK:-0}
WAIT_POLICY=${WAIT_POLICY:-PASSIVE}
VENV=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/libre/bench-venv}
LIBRE_CACHE=${LIBRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libre}
export LIBRE_CACHE
export BENCH_THREADS=${BENCH_THREADS:-2}
export BENCH_WARMUP=${BENCH_WARMUP:-1}
export BENCH_DEVICE=${BENCH_DEVICE:-cpu}
export BENCH_PRECISION=${BENCH_PRECISION:-f32}
case $BENCH_PRECISION in f32 | bf16) ;; *) echo "BENCH_PRECISION: f32 or bf16, got $BENCH_PRECISION" >&2; exit 2 ;; esac
case $ATTACK_LIBRE_PRECISION in f32 | bf16) ;; *) echo "ATTACK_LIBRE_PRECISION: f32 or bf16, got $ATTACK_LIBRE_PRECISION" >&2; exit 2 ;; esac
export OMP_NUM_THREADS=$BENCH_THREADS MKL_NUM_THREADS=$BENCH_THREADS
export PYTHONDONTWRITEBYTECODE=1
case $WAIT_POLICY in
  default) unset OMP_WAIT_POLICY ;;
  *) export OMP_WAIT_POLICY=$WAIT_POLICY ;;
esac

die() {
  echo "bench_vs_pytorch.sh: $*" >&2
  exit 1
}
for v in ROUNDS REPS SLOW_REPS BATCH TRAIN_BATCH TRAIN_REPS BENCH_THREADS BENCH_WARMUP \
  ATTACK_IMAGES ATTACK_STEPS ATTACK_FULL_IMAGES ATTACK_FULL_STEPS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 0 ] || die "$v=${!v} is not a number"
done
case $PT_OPT in 0 | 1 | all) ;; *) die "PT_OPT=$PT_OPT: 0, 1 or all" ;; esac
case $E2E$CHECK$PT_MALLOC$ATTACK in [01][01][01][01]) ;; *) die "E2E, CHECK, PT_MALLOC and ATTACK are 0 or 1" ;; esac
for c in $ATTACK_CASES; do
  case $c in step | full) ;; *) die "ATTACK_CASES: step and/or full, got $c" ;; esac
done
[ "$ATTACK_IMAGES" -ge 1 ] && [ "$ATTACK_STEPS" -ge 1 ] && [ "$ATTACK_FULL_IMAGES" -ge 1 ] \
  && [ "$ATTACK_FULL_STEPS" -ge 1 ] || die "ATTACK_IMAGES, ATTACK_STEPS, ATTACK_FULL_* must be >= 1"
# PT_ENV: the environment of every PyTorch process (env(1) arguments).
PT_ENV=(env)
[ "$PT_MALLOC" = 1 ] && PT_ENV+=(MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824)
[ "$ROUNDS" -ge 1 ] && [ "$REPS" -ge 1 ] && [ "$SLOW_REPS" -ge 1 ] && [ "$BATCH" -ge 1 ] \
  && [ "$TRAIN_BATCH" -ge 1 ] && [ "$TRAIN_REPS" -ge 1 ] && [ "$BENCH_THREADS" -ge 1 ] \
  || die "ROUNDS, REPS, SLOW_REPS, BATCH, TRAIN_BATCH, TRAIN_REPS and BENCH_THREADS must be >= 1"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench_vs_pytorch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- 1. the PyTorch venv (once; marked complete only after a successful install) ---------------
venv_ok() {
  [ -f "$VENV/.complete" ] && "$VENV/bin/python" -c '
import numpy, torch
assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__' 2>/dev/null
}
if [ -n "${BENCH_PY:-}" ]; then
  "$BENCH_PY" -c 'import torch' || die "BENCH_PY=$BENCH_PY does not import torch"
elif ! venv_ok; then
  echo "creating $VENV (torch==2.11.0, torchvision==0.26.0, numpy from PyPI; ~4.7 GB, once)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (is python3-venv installed?)"
  "$VENV/bin/python" -m pip install --quiet torch==2.11.0 torchvision==0.26.0 numpy >&2 \
    || die "pip install torch==2.11.0 torchvision==0.26.0 numpy into $VENV failed"
  touch "$VENV/.complete"
  venv_ok || die "$VENV does not import torch 2.11.0"
fi
PY=${BENCH_PY:-$VENV/bin/python}

# --- 2. the libre side -------------------------------------------------------------------------
# .cargo/config.toml points LIBTORCH at .libtorch (made by `make libtorch`); without it use the
# cached libtorch directly rather than create the link in the repository.
if [ -z "${BENCH_BIN:-}" ] || [ "$E2E" = 1 ] || [ "$ATTACK" = 1 ]; then
  if [ ! -e .libtorch ] && [ -z "${LIBTORCH:-}" ]; then
    LIBTORCH=$(scripts/fetch-libtorch.sh --print-dir) || die "scripts/fetch-libtorch.sh failed"
    export LIBTORCH
  fi
fi
if [ -z "$CASES" ]; then
  LIBRE_BENCH=""
elif [ -n "${BENCH_BIN:-}" ]; then
  [ -x "$BENCH_BIN" ] || die "BENCH_BIN=$BENCH_BIN is not an executable"
  LIBRE_BENCH=$(cd "$(dirname "$BENCH_BIN")" && pwd)/$(basename "$BENCH_BIN")
else
  echo "building examples/bench_vs_pytorch.rs (cargo build --release --example bench_vs_pytorch)" >&2
  cargo build --release --example bench_vs_pytorch >&2 \
    || die "cargo build --release --example bench_vs_pytorch failed"
  LIBRE_BENCH="$ROOT/target/release/examples/bench_vs_pytorch"
fi
if [ "$ATTACK" = 1 ]; then
  echo "building examples/bench_attack.rs (cargo build --release --example bench_attack)" >&2
  cargo build --release --example bench_attack >&2 \
    || die "cargo build --release --example bench_attack failed"
fi
if [ "$E2E" = 1 ] || { [ "$ATTACK" = 1 ] && [ -z "${ATTACK_WEIGHTS:-}" ]; }; then
  echo "building the libre binary (cargo build --release --bin libre)" >&2
  cargo build --release --bin libre >&2 || die "cargo build --release --bin libre failed"
fi
LIBRE="$ROOT/target/release/libre"

if [ "$CHECK" = 1 ]; then
  echo "checking the PyTorch implementations against each other" >&2
  "$PY" scripts/bench_vs_pytorch.py --check >&2 || die "bench_vs_pytorch.py --check failed"
fi

# --- 3. interleaved runs -------------------------------------------------------------------------
RAW="$TMP/raw"
: >"$RAW"

# run SIDE CASE CMD...: one process; its `CASE MS` lines go to $RAW as `SIDE CASE MS`.
run() {
  local side=$1 case=$2
  shift 2
  local out="$TMP/out" err="$TMP/err" rc=0
  "$@" >"$out" 2>"$err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$err" >&2
    die "$side failed on $case (exit $rc): $*"
  fi
  awk -v s="$side" -v c="$case" '$1 == c && NF == 2 { print s, c, $2; n++ }
    END { exit n == 0 }' "$out" >>"$RAW" || die "$side printed no timings for $case: $*"
}

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src examples 2>/dev/null || rev="$rev+local changes"
torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
tv_version=$("$PY" -c 'import torchvision; print(torchvision.__version__)' 2>/dev/null \
  || echo "not installed")
start=$(date +%s)

for case in $CASES; do
  reps=$REPS batch=$BATCH
  [[ $case == *-224:* || $case == resnet*:mf-* ]] && reps=$SLOW_REPS
  [[ $case == *-train ]] && reps=$TRAIN_REPS batch=$TRAIN_BATCH
  echo "case $case: $ROUNDS rounds x $reps reps, batch $batch" >&2
  for ((r = 1; r <= ROUNDS; r++)); do
    run libre "$case" "$LIBRE_BENCH" "$case" "$reps" "$batch"
    run pytorch "$case" "${PT_ENV[@]}" "$PY" scripts/bench_vs_pytorch.py "$case" "$reps" "$batch" --impl ref
    if [[ $case == *:ens-last || $case == *:mf-last || $case == *:ens-last-train ]] \
      && { [ "$PT_OPT" = all ] || { [ "$PT_OPT" = 1 ] && [[ $case != *-224:* ]]; }; }; then
      run pytorch-opt "$case" "${PT_ENV[@]}" "$PY" scripts/bench_vs_pytorch.py "$case" "$reps" "$batch" --impl opt
    fi
  done
done

if [ "$E2E" = 1 ]; then
  weights="$LIBRE_CACHE/zoo/lenet5-mnist.safetensors"
  data="$LIBRE_CACHE/data/mnist-test.safetensors"
  if [ ! -s "$weights" ] || [ ! -s "$data" ]; then
    "$LIBRE" data fetch lenet5-mnist mnist >&2 || die "libre data fetch lenet5-mnist mnist failed"
  fi
  [ -s "$weights" ] && [ -s "$data" ] || die "no $weights or $data after libre data fetch"
  "$LIBRE" convert -q --weights "$weights" --posterior ensemble --layers last-block \
    --mc-samples 20 --out "$TMP/lenet5-ens.safetensors" >&2 || die "libre convert failed"
  echo "e2e: libre eval vs PyTorch loop, $ROUNDS rounds" >&2
  for ((r = 1; r <= ROUNDS; r++)); do
    for w in "$weights" "$TMP/lenet5-ens.safetensors"; do
      variant=dnn
      [ "$w" = "$weights" ] || variant=ens-last
      "$LIBRE" eval --json -q --device cpu --weights "$w" --data mnist:test >"$TMP/out" 2>"$TMP/err" \
        || { tail -n 20 "$TMP/err" >&2; die "libre eval --weights $w failed"; }
      "$PY" -c '
import json, sys
d = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]["data"]
print("libre", sys.argv[2], d["seconds"], d["n"] / d["seconds"], d["top1"])' \
        "$TMP/out" "e2e:lenet5:$variant" >>"$TMP/e2e" || die "could not read libre eval's JSON"
      "${PT_ENV[@]}" "$PY" scripts/bench_vs_pytorch.py --e2e "$w" "$data" >"$TMP/out" 2>"$TMP/err" \
        || { tail -n 20 "$TMP/err" >&2; die "bench_vs_pytorch.py --e2e $w failed"; }
      awk '{ print "pytorch", $0 }' "$TMP/out" >>"$TMP/e2e"
    done
  done
fi
ATT="$TMP/attack"
: >"$ATT"
if [ "$ATTACK" = 1 ]; then
  data="$LIBRE_CACHE/data/mnist-test.safetensors"
  [ -s "$data" ] || "$LIBRE" data fetch mnist >&2 || die "libre data fetch mnist failed"
  if [ -n "${ATTACK_WEIGHTS:-}" ]; then
    aw=$ATTACK_WEIGHTS
  else
    weights="$LIBRE_CACHE/zoo/lenet5-mnist.safetensors"
    [ -s "$weights" ] || "$LIBRE" data fetch lenet5-mnist >&2 || die "libre data fetch lenet5-mnist failed"
    aw="$TMP/lenet5-ens-attack.safetensors"
    "$LIBRE" convert -q --weights "$weights" --posterior ensemble --layers last-block \
      --mc-samples 20 --out "$aw" >&2 || die "libre convert failed"
  fi
  [ -s "$aw" ] || die "no weights $aw"
  AB="$ROOT/target/release/examples/bench_attack"
  att_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  for c in $ATTACK_CASES; do
    for ((r = 1; r <= ROUNDS; r++)); do
      if [ "$c" = step ]; then
        echo "attack-step: round $r of $ROUNDS, $ATTACK_IMAGES images, $ATTACK_STEPS steps" >&2
        RAW=$ATT run libre lenet5:attack-step env BENCH_PRECISION="$ATTACK_LIBRE_PRECISION" "$AB" attack-step "$aw" mnist:test \
          "$ATTACK_IMAGES" "$ATTACK_STEPS" 1
        RAW=$ATT run pytorch lenet5:attack-step "${PT_ENV[@]}" "$PY" scripts/bench_vs_pytorch.py \
          --attack attack-step "$aw" "$data" "$ATTACK_IMAGES" "$ATTACK_STEPS" 1 --impl ref
        RAW=$ATT run pytorch-opt lenet5:attack-step "${PT_ENV[@]}" "$PY" scripts/bench_vs_pytorch.py \
          --attack attack-step "$aw" "$data" "$ATTACK_IMAGES" "$ATTACK_STEPS" 1 --impl opt
      else
        echo "whole attack: round $r of $ROUNDS, $ATTACK_FULL_IMAGES images" >&2
        RAW=$ATT run libre "lenet5:selective-$ATTACK_FULL_STEPS" env BENCH_PRECISION="$ATTACK_LIBRE_PRECISION" "$AB" selective "$aw" mnist:test \
          "$ATTACK_FULL_IMAGES" "$ATTACK_FULL_STEPS" 1
        grep '^selective: evaded' "$TMP/err" >>"$TMP/evaded" || true
        thr=$(sed -n 's/^selective: threshold \([^ ]*\) .*/\1/p' "$TMP/err" | head -n 1)
        [ -n "$thr" ] || die "no threshold in the libre selective run's stderr"
        RAW=$ATT run pytorch-sel "lenet5:selective-$ATTACK_FULL_STEPS" "${PT_ENV[@]}" "$PY" \
          scripts/bench_vs_pytorch.py --attack "selective-$ATTACK_FULL_STEPS" "$aw" "$data" \
          "$ATTACK_FULL_IMAGES" "$ATTACK_FULL_STEPS" 1 --impl opt --threshold "$thr"
        grep '^pytorch selective' "$TMP/err" >>"$TMP/evaded" || true
        RAW=$ATT run pytorch "lenet5:pgd-$ATTACK_FULL_STEPS" "${PT_ENV[@]}" "$PY" \
          scripts/bench_vs_pytorch.py --attack "pgd-$ATTACK_FULL_STEPS" "$aw" "$data" \
          "$ATTACK_FULL_IMAGES" "$ATTACK_FULL_STEPS" 1 --impl opt
      fi
    done
  done
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - start))
[ -n "${RAW_OUT:-}" ] && cp "$RAW" "$RAW_OUT"

# --- 4. the table --------------------------------------------------------------------------------
echo
echo "libre vs PyTorch, CPU, interleaved (libre $rev; torch $torch_version, torchvision $tv_version)"
echo "machine: ${cpu:-unknown CPU}, nproc $(nproc); load average (1/5/15 min) before $load_before, after $load_after"
if [ "$BENCH_DEVICE" != cpu ]; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
  echo "device: BENCH_DEVICE=$BENCH_DEVICE for both forward sides (${gpu:-nvidia-smi unavailable});" \
    "timed forwards end with a device synchronisation"
fi
echo "precision: BENCH_PRECISION=$BENCH_PRECISION for both forward sides"
echo "threads: BENCH_THREADS=$BENCH_THREADS for both (tch::set_num_threads / torch.set_num_threads," \
  "OMP_NUM_THREADS=$OMP_NUM_THREADS); OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset (libgomp default)} for both"
[ -n "$CASES" ] && echo "protocol: $ROUNDS rounds per case, libre then PyTorch (then PyTorch best-effort), one process" \
  "each: $BENCH_WARMUP warm-up + $REPS timed forwards ($SLOW_REPS for 224 px and mean-field ResNets);" \
  "batch $BATCH, S = 20, random weights, no_grad, batch norm in eval mode; training cases (*-train):" \
  "$TRAIN_REPS timed optimiser steps of $TRAIN_BATCH images, batch norm in training mode; ${elapsed} s in all"
if [ "$PT_MALLOC" = 1 ]; then
  alloc_pt="PyTorch with the same (PT_MALLOC=1)"
else
  alloc_pt="PyTorch with glibc's defaults (PT_MALLOC=0)"
fi
echo "allocator: libre ${LIBRE_MALLOC_TUNING:+(LIBRE_MALLOC_TUNING=$LIBRE_MALLOC_TUNING) }keeps freed" \
  "memory unless LIBRE_MALLOC_TUNING=0 (src/runtime/alloc.rs); $alloc_pt"
if [ "$E2E" = 1 ] && [ -z "${OMP_WAIT_POLICY:-}" ]; then
  echo "note: the libre binary (end-to-end rows) re-executes itself with OMP_WAIT_POLICY=PASSIVE" \
    "when the variable is unset (src/main.rs); the example and PyTorch run with libgomp's default"
fi
if [ "$ATTACK" = 1 ]; then
  echo "attack precision: libre $ATTACK_LIBRE_PRECISION, PyTorch $BENCH_PRECISION"
  echo "adaptive attack (ATTACK=1): weights ${ATTACK_WEIGHTS:-the zoo LeNet5, linear1 converted to 20 members};" \
    "load average before the attack cases $att_load_before"
  [ -s "$TMP/evaded" ] && sed 's/^selective/libre selective/; s/^/  /' "$TMP/evaded"
fi
"$PY" - "$RAW" "${TMP}/e2e" "$ATT" <<'EOF'
import statistics, sys
from collections import defaultdict

t = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    side, case, ms = line.split()
    t[side, case].append(float(ms))
    if case not in order:
        order.append(case)

def stat(side, case):
    v = t.get((side, case))
    return (min(v), statistics.median(v), len(v)) if v else None

def ms(x):
    return f"{x:.1f}" if x < 1000 else f"{x:.0f}"

if order:
    print()
    print("time per forward (*-train: per optimiser step), ms (min / median over all timed units);"
          " ratio = libre / PyTorch")
    hdr = (f"{'case':<24} {'libre min':>9} {'median':>8}  {'PyTorch min':>11} {'median':>8}  "
           f"{'ratio min':>9} {'median':>6}  {'PT best-effort':>14} {'median':>8} {'ratio med':>9}")
    print(hdr)
    print("-" * len(hdr))
for case in order:
    a, b, c = stat("libre", case), stat("pytorch", case), stat("pytorch-opt", case)
    row = f"{case:<24} {ms(a[0]):>9} {ms(a[1]):>8}  {ms(b[0]):>11} {ms(b[1]):>8}  " \
          f"{a[0] / b[0]:>9.2f} {a[1] / b[1]:>6.2f}"
    if c:
        row += f"  {ms(c[0]):>14} {ms(c[1]):>8} {a[1] / c[1]:>9.2f}"
    print(row + f"   (n = {a[2]}/{b[2]}{'/' + str(c[2]) if c else ''})")
if order:
    print("PyTorch = the ScalableBDL-style reference (repeat + grouped conv, parallel_eval;"
          " training: a gathered weight per image, an N-group conv);"
          " PT best-effort = shared-input wide conv / centre-tap matmul, fused batch norm;"
          " training: images sorted by member, one conv per member"
          " (scripts/bench_vs_pytorch.py, scripts/libre_train_torch.py)")

try:
    lines = [l.split() for l in open(sys.argv[2])]
except FileNotFoundError:
    lines = []
if lines:
    e = defaultdict(list)
    acc = {}
    for side, case, secs, ips, top1 in lines:
        e[side, case].append(float(ips))
        acc[side, case] = float(top1)
    print()
    print("end to end: 10,000 MNIST test digits, batch 256 (libre eval's in-process seconds vs the"
          " same span of a PyTorch loop), images/s (max / median)")
    hdr = f"{'case':<22} {'libre max':>9} {'median':>8}  {'PyTorch max':>11} {'median':>8}  " \
          f"{'libre/PyTorch (median)':>22}  top-1 libre / PyTorch"
    print(hdr)
    print("-" * len(hdr))
    for case in dict.fromkeys(c for _, c in e):
        a, b = e["libre", case], e["pytorch", case]
        print(f"{case:<22} {max(a):>9.0f} {statistics.median(a):>8.0f}  {max(b):>11.0f} "
              f"{statistics.median(b):>8.0f}  {statistics.median(a) / statistics.median(b):>22.2f}"
              f"  {acc['libre', case]:.4f} / {acc['pytorch', case]:.4f}")

att = defaultdict(list)
for line in open(sys.argv[3]):
    side, case, v = line.split()
    att[side, case].append(float(v))
if att:
    print()
    print("adaptive attack (issue 25): LeNet5, linear1 a 20-member ensemble, feature variance;"
          " ms (min / median over processes); ratio = libre / PyTorch (median)")
    hdr = f"{'case':<34} {'libre min':>9} {'median':>8}  {'PyTorch min':>11} {'median':>8}  {'ratio':>6}"
    print(hdr)
    print("-" * len(hdr))
    def row(name, a, b):
        if a and b:
            print(f"{name:<34} {ms(min(a)):>9} {ms(statistics.median(a)):>8}  {ms(min(b)):>11} "
                  f"{ms(statistics.median(b)):>8}  {statistics.median(a) / statistics.median(b):>6.2f}"
                  f"   (n = {len(a)}/{len(b)})")
    a = att.get(("libre", "lenet5:attack-step"))
    row("attack-step, per step (PT ref)", a, att.get(("pytorch", "lenet5:attack-step")))
    row("attack-step, per step (PT opt)", a, att.get(("pytorch-opt", "lenet5:attack-step")))
    for side, case in list(att):
        if side == "libre" and case.startswith("lenet5:selective-"):
            k = case.rsplit("-", 1)[1]
            row(f"selective-{k}, both early stop", att[side, case],
                att.get(("pytorch-sel", case)))
            row(f"libre selective-{k} vs PT PGD-{k}", att[side, case],
                att.get(("pytorch", f"lenet5:pgd-{k}")))
    print("attack-step: one step of mimicry (CE of the MC-averaged predictive - 100 * feature"
          " variance), forward + backward, libre's Adaptive engine (ModelVictim) vs a PyTorch eager"
          " loop (ref: repeat + bmm members, opt: one shared-input matmul); selective: early stop"
          " once evaded, the detector's threshold, on both sides in the 'both early stop' row;"
          " PGD: CE only, no early stop")
EOF
