#!/usr/bin/env bash
# Sharded `libre detect` on Slurm: a job array of N parts, then a merge job that starts when every
# part succeeded (docs/cluster.md).
#
#   scripts/slurm/submit-detect.sh N OUT.csv INPUT... --weights DETECTOR [libre detect flags]
#
# Parts go to OUT.csv.parts/part-K.csv (+ a manifest each), Slurm logs beside them; the merge
# writes OUT.csv, equal to the output of one unsharded run. TASKS=2,5 resubmits only those parts
# (after a task was killed) with a new merge job. SBATCH_ARGS adds sbatch options (partition,
# time, --cpus-per-task, ...); LIBRE names the binary. Prints the two job ids.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
n=$1 out=$2
shift 2
case "$n" in '' | *[!0-9]* | 0) echo "submit-detect: N must be a positive integer, got '$n'" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
parts="$out.parts"
ext="${out##*.}"
[ "$ext" = "$out" ] && ext=csv
mkdir -p "$parts"
# shellcheck disable=SC2086
array=$(sbatch --parsable --job-name=libre-detect --array="${TASKS:-0-$((n - 1))}" \
    --output="$parts/slurm-%A_%a.out" ${SBATCH_ARGS:-} \
    "$here/libre.sbatch" detect "$@" --shard-count "$n" --out "$parts/part-{shard}.$ext")
files=()
for ((k = 0; k < n; k++)); do files+=("$parts/part-$k.$ext"); done
# shellcheck disable=SC2086
merge=$(sbatch --parsable --job-name=libre-detect-merge --dependency="afterok:${array%%;*}" \
    --kill-on-invalid-dep=yes --output="$parts/slurm-merge-%j.out" ${SBATCH_ARGS:-} \
    "$here/libre.sbatch" detect merge "${files[@]}" --out "$out")
echo "${array%%;*} $merge"
