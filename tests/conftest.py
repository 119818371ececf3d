"""Shared fixtures: a tiny run config on the generated dataset, small enough to train in seconds."""
import copy

import pytest

TINY_BASE = {
    "data": {"name": "synthetic", "img_size": 16, "train_limit": 512, "test_limit": 256, "augmentation": "crop_rand"},
    "model": {"preset": "mae_vit_tiny_patch4", "embed_dim": 32, "depth": 2, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
    "masking": {"strategy": "random", "ratio": 0.75},
    "pretrain": {"epochs": 2, "warmup_epochs": 1, "batch_size": 128, "blr": 1.5e-3},
    "evals": {
        "linear_probe": {"epochs": 3, "warmup_epochs": 1, "batch_size": 128, "augmentation": "none"},
        "finetune": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "augmentation": "none"},
    },
}


@pytest.fixture
def tiny_base():
    return copy.deepcopy(TINY_BASE)


from slurm_fixture import slurm_cluster  # noqa: E402,F401  (a real one-node SLURM cluster)
