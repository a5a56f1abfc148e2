# Helpers for scripts that write `libre evaluate` experiment files (sourced, not run).

# experiment_head "TITLE" DATA [BATCH_SIZE]: an experiment's first lines (seed 0, 1000 bootstrap
# resamples, batch 200 unless given), before its [[model]] and [[attack]] tables.
experiment_head() {
  printf 'title = "%s"\ndata = "%s"\nseed = 0\nbootstrap = 1000\nbatch_size = %s\n' "$1" "$2" "${3:-200}"
}

# attack NAME "EPS, ..." [STEPS STEP_SIZE [EXTRA_TOML_LINE]]: one [[attack]] table. Iterative
# attacks take 40 steps of 0.01 in the studies (docs/results.md).
attack() {
  printf '\n[[attack]]\nname = "%s"\neps = [%s]\n' "$1" "$2"
  if [ $# -ge 4 ]; then printf 'steps = %s\nstep_size = %s\n' "$3" "$4"; fi
  if [ $# -ge 5 ]; then printf '%s\n' "$5"; fi
}

# model NAME WEIGHTS "SCORE", ...: one [[model]] table.
model() {
  printf '\n[[model]]\nname = "%s"\nweights = "%s"\nscores = [%s]\n' "$1" "$2" "$3"
}
