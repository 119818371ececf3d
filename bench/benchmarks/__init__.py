"""`mimbench bench`: speed (speed.py, the command: our pre-training step against the official-style
port in official_mae.py, steps.py; the evals' steps in eval_kinds.py; timed by timing.py; the
harness at scale in harness.py) and masks (masks.py: batched mask strategies against per-sample Python)."""
