"""Training: the one pre-training loop every method plugs into (pretrain.py), optimisers and
schedules (optim.py), exact-resume checkpoints (checkpoint.py), DDP ranks (distributed.py) and
the evals on the encoder interface (evals.py: linear probe, fine-tune, kNN)."""
