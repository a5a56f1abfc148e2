#!/usr/bin/env bash
# The Slurm test (`make test` runs it after the cargo tests): starts a real single-node Slurm on
# this machine (slurmctld + slurmd + munge, Debian's slurm-wlm, installed if missing), submits the
# job-array scripts for a small `libre detect` and a small `libre evaluate`, kills one part and
# resubmits only it, and checks that the merged outputs equal unsharded runs exactly. Fails loudly
# when Slurm cannot be installed or started: it never skips. Stops the daemons it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
. scripts/lib/experiment.sh
fail() { echo "slurm test: FAILED: $*" >&2; exit 1; }
say() { echo "slurm test: $*" >&2; }

[ "$(id -u)" = 0 ] || fail "needs root to install and run slurmctld/slurmd (run as root, e.g. in CI)"
if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; } ||
        fail "could not install slurm-wlm and munge with apt-get"
fi
LIBRE=$root/target/release/libre
export LIBRE
[ -x "$LIBRE" ] || fail "$LIBRE is missing (cargo build --release first)"

D=$(mktemp -d /tmp/libre-slurm.XXXXXX)
chmod 755 "$D"
pids=()
cleanup() {
    local rc=$?
    local daemons=("${pids[@]}")
    for f in "$D/ctld.pid" "$D/d.pid"; do [ -f "$f" ] && daemons+=("$(cat "$f")"); done
    for p in "${daemons[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ $rc -ne 0 ]; then
        for f in "$D"/log/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 30 "$f" >&2; }; done
    fi
    # slurmctld writes its state files while it shuts down: wait (up to 10 s) until the daemons
    # are gone before removing their directory, and never let the clean-up decide the result.
    for p in "${daemons[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$D" 2>/dev/null || { sleep 1; rm -rf "$D" 2>/dev/null; } || echo "note: could not remove $D" >&2
    exit $rc
}
trap cleanup EXIT

# munge: the key and daemon Slurm authenticates with (a running munged is reused).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -f /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    su -s /bin/sh munge -c /usr/sbin/munged || fail "munged did not start"
    sleep 1
    pids+=("$(cat /run/munge/munged.pid 2>/dev/null || pgrep -n munged)")
    munge -n | unmunge >/dev/null || fail "munge does not authenticate"
fi

# A one-node cluster with every file under $D; SLURM_CONF points daemons and commands at it.
host=$(hostname)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2000 ))
mkdir -p "$D/state" "$D/spool" "$D/log"
cat >"$D/slurm.conf" <<CONF
ClusterName=libretest
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/ctld.pid
SlurmdPidFile=$D/d.pid
SlurmctldLogFile=$D/log/ctld.log
SlurmdLogFile=$D/log/d.log
ReturnToService=2
MpiDefault=none
KillWait=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$D/slurm.conf
/usr/sbin/slurmctld -i || fail "slurmctld did not start"
/usr/sbin/slurmd || fail "slurmd did not start"
for _ in $(seq 60); do
    sinfo -h -o %t 2>/dev/null | grep -qx idle && break
    sleep 0.5
done
sinfo -h -o %t | grep -qx idle || fail "the node did not come up idle: $(sinfo 2>&1)"
say "single-node Slurm up ($host, $cpus CPUs)"

# Wait for jobs to leave the queue.
wait_jobs() {
    for _ in $(seq 600); do
        [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
        sleep 0.5
    done
    fail "jobs $1 still queued after 5 minutes: $(squeue)"
}

W=$D/work
mkdir -p "$W"
export OMP_NUM_THREADS=1
# A Bayesian model: LeNet5's last block as an 8-member ensemble (libre's default member spread).
"$LIBRE" -q convert --weights zoo:lenet5-mnist --posterior ensemble --layers last-block \
    --mc-samples 8 --out "$W/ens.safetensors" >/dev/null

# 1. detect: 3 parts; part 2 is killed while running and resubmitted alone.
inputs=("mnist:test" "mnist:train[0:6000]")
"$LIBRE" -q detect "${inputs[@]}" --weights "$W/ens.safetensors" --threshold 0.01 \
    --batch-size 100 --out "$W/detect-full.csv"
read -r arr mrg < <(scripts/slurm/submit-detect.sh 3 "$W/detect.csv" "${inputs[@]}" \
    --weights "$W/ens.safetensors" --threshold 0.01 --batch-size 100)
for _ in $(seq 400); do
    [ "$(squeue -h -j "${arr}_2" -o %T 2>/dev/null)" = RUNNING ] && break
    sleep 0.05
done
[ "$(squeue -h -j "${arr}_2" -o %T)" = RUNNING ] || fail "part 2 never ran"
scancel "${arr}_2"
wait_jobs "$arr,$mrg"
[ -f "$W/detect.csv.parts/part-2.csv.part.json" ] && fail "part 2 finished before it was killed"
[ -f "$W/detect.csv" ] && fail "the merge ran although part 2 was killed"
[ -f "$W/detect.csv.parts/part-0.csv.part.json" ] && [ -f "$W/detect.csv.parts/part-1.csv.part.json" ] ||
    fail "parts 0 and 1 did not finish: $(cat "$W"/detect.csv.parts/slurm-*.out)"
if "$LIBRE" -q detect merge "$W"/detect.csv.parts/part-{0,1}.csv --out "$W/x.csv" 2>"$W/err"; then
    fail "merging without part 2 succeeded"
fi
grep -q "shard(s) 2/3 missing" "$W/err" || fail "unexpected merge error: $(cat "$W/err")"
say "detect: part 2 killed while running; the merge refused the incomplete set"
read -r arr mrg < <(TASKS=2 scripts/slurm/submit-detect.sh 3 "$W/detect.csv" "${inputs[@]}" \
    --weights "$W/ens.safetensors" --threshold 0.01 --batch-size 100)
wait_jobs "$arr,$mrg"
[ -f "$W/detect.csv" ] || fail "no merged output: $(cat "$W"/detect.csv.parts/slurm-*.out)"
cmp "$W/detect-full.csv" "$W/detect.csv" || fail "merged detect output differs from the unsharded run"
say "detect: resubmitted part 2; merged CSV == unsharded CSV ($(($(wc -l <"$W/detect.csv") - 1)) rows)"

# 2. evaluate: 2 parts over the cells of a small experiment, merged by a dependent job.
{
    printf 'title = "slurm test"\ndata = "mnist:test[0:60]"\nseed = 3\nbatch_size = 30\nbootstrap = 20\n'
    model dnn zoo:lenet5-mnist '"msp", "entropy"'
    model ens "$W/ens.safetensors" '"feature-variance", "msp"'
    attack fgsm "0.1, 0.3"
    attack pgd 0.3 5 0.1
} >"$W/exp.toml"
"$LIBRE" -q evaluate "$W/exp.toml" --out "$W/eval-full" >/dev/null
read -r arr mrg < <(scripts/slurm/submit-evaluate.sh 2 "$W/exp.toml" "$W/eval")
wait_jobs "$arr,$mrg"
[ -f "$W/eval/summary.json" ] || fail "no merged report: $(cat "$W"/eval.parts/slurm-*.out)"
cmp "$W/eval-full/summary.json" "$W/eval/summary.json" || fail "merged summary.json differs"
cmp <(sort "$W/eval-full/scores.csv") <(sort "$W/eval/scores.csv") || fail "merged scores.csv differs"
say "evaluate: 2 parts + merge job; summary.json and scores.csv equal the unsharded run"
say "passed"
