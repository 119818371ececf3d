"""The evaluations: partial fine-tuning freezes what it says, the weighted kNN votes as Wu et al. /
DINO do, and the linear probe sees the same batches with cached or recomputed features."""
import copy
import math

import pytest
import torch

from bench.train import evals, features
from bench.study.config import resolve
from bench.data import create_dataset
from bench.train.optim import layer_decay_groups
from bench.train.pretrain import pretrain
from bench.launch.job import run_one
from conftest import TINY_BASE


@pytest.fixture(scope="module")
def tiny():
    """The tiny synthetic config, its two splits, and an encoder pre-trained on it (2 epochs)."""
    config = resolve(copy.deepcopy(TINY_BASE))
    train_set, test_set = create_dataset(config["data"], "train"), create_dataset(config["data"], "test")
    model, _ = pretrain(config, train_set, torch.device("cpu"))
    return config, model.encoder_state_dict(), train_set, test_set


# ----------------------------------------------------------------------------- partial fine-tuning
# depth 2: with blocks = 1 block 0 is frozen; with 0.5 block 1's attention half is frozen too
FROZEN_AND_TUNED = {
    0: (("blocks.0.", "blocks.1."), ()),
    0.5: (("blocks.0.", "blocks.1.norm1", "blocks.1.attn"), ("blocks.1.norm2", "blocks.1.mlp")),
    1: (("blocks.0.",), ("blocks.1.",)),
}


@pytest.mark.parametrize("blocks", [0, 0.5, 1])
def test_partial_finetune_trains_only_the_last_blocks(tiny, blocks):
    config, encoder_state, train_set, test_set = tiny
    config = copy.deepcopy(config)
    config["evals"]["finetune"]["blocks"] = blocks
    result, vit = evals.finetune(config, encoder_state, train_set, test_set, "cpu", return_model=True)
    frozen_prefixes, tuned_prefixes = FROZEN_AND_TUNED[blocks]
    after = vit.state_dict()
    embeddings = ("patch_embed.", "pos_embed", "cls_token")
    frozen = [k for k in encoder_state if k.startswith(frozen_prefixes + embeddings)]
    tuned = [k for k in encoder_state if k.startswith(tuned_prefixes) and not k.startswith(frozen_prefixes)]
    assert frozen and (tuned or blocks == 0)
    for key in frozen:
        assert torch.equal(after[key], encoder_state[key]), f"{key} moved"
    for key in tuned:
        assert not torch.equal(after[key], encoder_state[key]), f"{key} did not train"
    for name, param in vit.named_parameters():
        assert param.requires_grad == name.startswith(tuned_prefixes + ("fc_norm.", "head.")), name

    trainable = {name for name, p in vit.named_parameters() if p.requires_grad}
    assert result["blocks"] == blocks
    assert result["trainable_params"] == sum(p.numel() for n, p in vit.named_parameters() if n in trainable)
    # the optimizer is given the trainable parameters only
    groups = layer_decay_groups(vit, 0.05, 0.75)
    assert sum(p.numel() for g in groups for p in g["params"]) == result["trainable_params"]


def test_full_finetune_tunes_everything(tiny):
    config, encoder_state, train_set, test_set = tiny
    result = evals.finetune(config, encoder_state, train_set, test_set, "cpu")
    assert result["blocks"] is None
    vit = evals.build_encoder(config, encoder_state, train_set.num_classes, train_set.channels, "avgpool")
    assert result["trainable_params"] == sum(p.numel() for p in vit.parameters())


# ----------------------------------------------------------------------------- kNN
def predict(train, labels, test, k, temperature=0.07, num_classes=2, chunk=256):
    return evals.knn_predict(torch.tensor(train, dtype=torch.float32), torch.tensor(labels),
                             torch.tensor(test, dtype=torch.float32), k, temperature, num_classes, chunk).tolist()


def test_knn_nearest_neighbour_by_cosine():
    # class 0 near the x axis, class 1 near the y axis. Lengths do not matter: (0.05, 0.02) is nearest
    # to (0, 0.1) in Euclidean distance (class 1) but at 22° from the x axis, closest in angle to (1, 0.2).
    train, labels = [[10.0, 0.0], [1.0, 0.2], [0.0, 0.1], [0.2, 3.0]], [0, 0, 1, 1]
    assert predict(train, labels, [[1.0, 0.1], [0.1, 5.0], [0.05, 0.02]], k=1) == [0, 1, 0]


def test_knn_two_against_two_is_decided_by_the_weights():
    # test (1, 0): class 1 at cos 0.995 twice, class 0 at cos 0.707 twice. A 2-2 count tie that
    # argmax alone would give to class 0; the weights exp(cos / T) give it to class 1.
    train, labels = [[1.0, 1.0], [1.0, -1.0], [1.0, 0.1], [1.0, -0.1]], [0, 0, 1, 1]
    assert predict(train, labels, [[1.0, 0.0]], k=4) == [1]


def test_knn_temperature_trades_closeness_against_numbers():
    # test (1, 0): one class-1 neighbour at cos 1, three class-0 neighbours at cos 0.6.
    # T = 0.07: e^(1/0.07) = 1.6e6 > 3 e^(0.6/0.07) = 1.6e4 → class 1.  T = 10: 1.105 < 3 × 1.062 → class 0.
    train, labels = [[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.6, -0.8]], [1, 0, 0, 0]
    assert math.exp(1 / 0.07) > 3 * math.exp(0.6 / 0.07) and math.exp(1 / 10) < 3 * math.exp(0.6 / 10)
    assert predict(train, labels, [[1.0, 0.0]], k=4, temperature=0.07) == [1]
    assert predict(train, labels, [[1.0, 0.0]], k=4, temperature=10.0) == [0]
    assert predict(train, labels, [[1.0, 0.0]], k=4, temperature=1e-3) == [1]  # no overflow at tiny T


def test_knn_k_larger_than_the_train_set_uses_all_of_it():
    train, labels = [[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.6, -0.8]], [1, 0, 0, 0]
    assert predict(train, labels, [[1.0, 0.0]], k=50, temperature=10.0) == [0]
    assert predict(train, labels, [[1.0, 0.0]], k=50, temperature=0.07) == [1]


def test_knn_chunks_match_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 5, generator=gen), torch.randn(23, 5, generator=gen)
    labels = torch.randint(0, 4, (60,), generator=gen)
    k, temperature = 7, 0.1
    expected = []
    for x in test:
        sims = torch.nn.functional.cosine_similarity(train, x[None], dim=1)
        top = sims.argsort(descending=True)[:k]
        votes = [sum(math.exp(sims[i].item() / temperature) for i in top if labels[i] == c) for c in range(4)]
        expected.append(max(range(4), key=votes.__getitem__))
    for chunk in (1, 5, 256):
        assert evals.knn_predict(train, labels, test, k, temperature, 4, chunk=chunk).tolist() == expected


@pytest.mark.parametrize("feature", ["cls", "avgpool"])
def test_knn_on_the_tiny_synthetic_set(tiny, feature):
    config, encoder_state, train_set, test_set = tiny
    config = copy.deepcopy(config)
    config["evals"]["knn"]["feature"] = feature
    result = evals.knn(config, encoder_state, train_set, test_set, "cpu")
    assert set(result) == {"top1", "k", "temperature", "feature", "wall_s"}
    assert (result["k"], result["temperature"], result["feature"]) == (20, 0.07, feature)
    assert result["top1"] > 40.0  # 10 classes of oriented gratings: chance is 10 %


def test_knn_lands_in_the_result(tmp_path, tiny_base):
    tiny_base["evals"] = {"linear_probe": {"enabled": False}, "finetune": {"enabled": False},
                          "knn": {"enabled": True, "k": 5}}
    out = run_one(resolve(tiny_base), "s", str(tmp_path), {"device": "cpu"})
    result = out["result"]
    assert list(result["evals"]) == ["knn"]
    assert result["knn_top1"] == result["evals"]["knn"]["top1"] > 40.0
    assert result["finetune_top1"] is None and result["linear_probe_top1"] is None


# ----------------------------------------------------------------------------- linear probe
def test_linear_probe_cached_and_recomputed_features_see_the_same_batches(tiny):
    config, encoder_state, train_set, test_set = tiny
    config = copy.deepcopy(config)
    assert config["evals"]["linear_probe"]["augmentation"] == "none"
    config["evals"]["linear_probe"]["batch_size"] = 96  # 512 images: 5 full batches, the last 32 dropped
    config["seed"] = 1  # the probe's shuffling seed; at 0 the old cached-branch order happened to coincide
    runs = []
    for recompute in (False, True):
        rows = []
        result = evals.linear_probe(config, encoder_state, train_set, test_set, "cpu", rows.append,
                                    _recompute_features=recompute)
        assert result["cached_features"] is not recompute
        runs.append(([r["loss"] for r in rows], result["top1"]))
    (cached_losses, cached_top1), (losses, top1) = runs
    assert len(cached_losses) == config["evals"]["linear_probe"]["epochs"]
    assert cached_losses == pytest.approx(losses, rel=1e-6, abs=0)  # another order: ~1e-4 apart
    assert cached_top1 == pytest.approx(top1, abs=1e-9)


# ----------------------------------------------------------------------------- probe and k-NN share features
@pytest.mark.parametrize("knn_feature, extractions", [("cls", 2), ("avgpool", 4)])
def test_the_probe_and_knn_extract_shared_features_once(tiny, monkeypatch, knn_feature, extractions):
    """Probe (cls, no augmentation) then k-NN: with the same feature the train and test sets go
    through the encoder once (2 extractions, not 4), and both evals score what they score alone."""
    config, encoder_state, train_set, test_set = tiny
    config = copy.deepcopy(config)
    config["evals"]["knn"].update(enabled=True, feature=knn_feature)
    assert config["evals"]["linear_probe"]["feature"] == "cls"
    alone = {"linear_probe": evals.linear_probe(config, encoder_state, train_set, test_set, "cpu")["top1"],
             "knn": evals.knn(config, encoder_state, train_set, test_set, "cpu")["top1"]}
    calls = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = {}
    assert [n for n in evals.list_evals() if n != "finetune"] == ["linear_probe", "knn"]  # the frozen ones first
    together = {name: evals.create_eval(name)(config, encoder_state, train_set, test_set, "cpu", shared=shared)["top1"]
                for name in ("linear_probe", "knn")}
    assert len(calls) == extractions
    assert together == alone
    assert shared == {}  # k-NN took them: nothing is held through the fine-tune


def test_the_budget_counts_shared_features_once(tiny):
    from bench.study.budget import run_budget
    config = copy.deepcopy(tiny[0])
    config["evals"]["knn"].update(enabled=True, feature="cls")
    assert run_budget(config, 100, 50)["knn"] == 0.0
    config["evals"]["knn"]["feature"] = "avgpool"
    assert run_budget(config, 100, 50)["knn"] > 0.0
