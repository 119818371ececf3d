"""Reconstruction targets: what a method predicts for a masked patch. One registry (see kinds.py)."""
from bench.targets.kinds import TARGETS, build_target, hog_features, patchify, resolve_params, train_tokenizer  # noqa: F401
