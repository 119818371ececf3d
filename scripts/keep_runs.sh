#!/usr/bin/env bash
# Commit-ready records of a long study's finished runs, so a fresh clone resumes it instead of
# re-running hours of compute (results/ is otherwise not committed).
#
#   bash scripts/keep_runs.sh results/<study> [results/<study> ...]    then: git commit
#
# Stages, with `git add -f`, the study's study.json and, for each run whose result.json exists
# (a finished run: result.json is written last, atomically), its config.yaml, result.json and
# metrics.jsonl — a few KB a run. Unfinished runs, checkpoints, leases and TensorBoard mirrors
# stay out: a relaunch runs what is not done, and `mimbench report` rebuilds the report.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash scripts/keep_runs.sh results/<study> ..." >&2; exit 2; }
for study in "$@"; do
  [ -f "$study/study.json" ] || { echo "keep_runs: $study/study.json not found (not a study folder)" >&2; exit 2; }
  files=("$study/study.json")
  done_runs=0
  for run in "$study"/*/; do
    [ -f "$run/result.json" ] || continue
    done_runs=$((done_runs + 1))
    for f in config.yaml result.json metrics.jsonl; do
      [ -f "$run/$f" ] && files+=("$run$f")
    done
  done
  git add -f -- "${files[@]}"
  echo "$study: $done_runs finished runs staged"
done
