"""Where a run becomes a job: submitit (launcher.py), what a job executes (job.py), the run
store (store.py: one folder per run, written atomically), the per-run lease that makes each run
run once (lease.py) and per-run status (status.py)."""
