#!/usr/bin/env bash
# Sharded `libre evaluate` on Slurm: a job array of N parts (each runs the cells i with
# i % N == K into OUT.parts/shard-K), then `libre report merge` into OUT when all succeeded
# (docs/cluster.md).
#
#   scripts/slurm/submit-evaluate.sh N EXPERIMENT.toml OUT [libre evaluate flags]
#
# A killed part loses at most its cell in flight: TASKS=3 resubmits part 3 (it resumes, keeping
# its finished cells) with a new merge job. SBATCH_ARGS adds sbatch options; LIBRE names the
# binary. Prints the two job ids.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
n=$1 experiment=$2 out=$3
shift 3
case "$n" in '' | *[!0-9]* | 0) echo "submit-evaluate: N must be a positive integer, got '$n'" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
parts="$out.parts"
mkdir -p "$parts"
# shellcheck disable=SC2086
array=$(sbatch --parsable --job-name=libre-evaluate --array="${TASKS:-0-$((n - 1))}" \
    --output="$parts/slurm-%A_%a.out" ${SBATCH_ARGS:-} \
    "$here/libre.sbatch" evaluate "$experiment" "$@" --shard-count "$n" --out "$parts/shard-{shard}")
dirs=()
for ((k = 0; k < n; k++)); do dirs+=("$parts/shard-$k"); done
# shellcheck disable=SC2086
merge=$(sbatch --parsable --job-name=libre-evaluate-merge --dependency="afterok:${array%%;*}" \
    --kill-on-invalid-dep=yes --output="$parts/slurm-merge-%j.out" ${SBATCH_ARGS:-} \
    "$here/libre.sbatch" report merge "${dirs[@]}" --out "$out")
echo "${array%%;*} $merge"
