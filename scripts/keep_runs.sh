#!/usr/bin/env bash
# Commit-ready records of a long study's finished runs, so a fresh clone resumes it instead of
# re-running hours of compute (results/ is otherwise not committed).
#
#   bash scripts/keep_runs.sh results/<study> [results/<study> ...]    then: git commit
#
# Stages, with `git add -f`, the study's study.json and, for each finished run (the store's own
# test: a complete result.json, bench.launch.store.RunFolder.is_done), its config.yaml,
# result.json and metrics.jsonl — a few KB a run. Unfinished runs, checkpoints, leases and
# TensorBoard mirrors stay out: a relaunch runs what is not done, and `mimbench report`
# rebuilds the report from the runs.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash scripts/keep_runs.sh results/<study> ..." >&2; exit 2; }
for study in "$@"; do
  [ -f "$study/study.json" ] || { echo "keep_runs: $study/study.json not found (not a study folder)" >&2; exit 2; }
  mapfile -t done_runs < <(python3 -c '
import sys
from bench.launch.store import iter_runs
for run in iter_runs(sys.argv[1]):
    if run.is_done():
        print(run.path)' "$study")
  files=("$study/study.json")
  for run in "${done_runs[@]}"; do
    for f in config.yaml result.json metrics.jsonl; do
      [ -f "$run/$f" ] && files+=("$run/$f")
    done
  done
  git add -f -- "${files[@]}"
  echo "$study: ${#done_runs[@]} finished runs staged"
done
