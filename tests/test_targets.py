"""Reconstruction targets (MAE Table 1d): PCA, the dVAE tokenizer and its cache, HOG, their losses and params."""
import math

import pytest
import torch

from bench import masking

from bench import targets
from bench.data.augment import augment, normalize
from bench.core.errors import ConfigError
from bench.study.config import resolve
from bench.data import create_dataset
from bench.methods.mae import MaskedAutoencoderViT
from bench.train.pretrain import pretrain
from bench.core.patches import patchify
from bench.targets import create_target, tokenizer
from bench.targets.hog import hog_features

# small enough to train in a second: 32 codes, 4096 patches, 6 epochs of 64 steps
SMALL_TOKENIZER = {"vocab_size": 32, "hidden": 32, "code_dim": 8, "epochs": 6, "batch_size": 64, "fit_patches": 4096}
SMALL_PARAMS = {"pca": {"components": 12, "fit_patches": 5000}, "dvae_token": SMALL_TOKENIZER, "hog": {}}


def setup(tiny_base, target: str, params: dict | None = None):
    """The resolved tiny config (16 px synthetic images, 4 px patches, 3 channels) and its training set."""
    tiny_base["pretrain"].update(target=target, target_params=params if params is not None else SMALL_PARAMS[target])
    cfg = resolve(tiny_base)
    return cfg, create_dataset(cfg["data"], "train")


def images_of(data_set, cfg, n: int = 8) -> torch.Tensor:
    """n normalised, un-augmented images as the model sees them."""
    images = data_set.images[:n]
    return normalize(augment(images, "none", cfg["data"]["img_size"], None), data_set.mean, data_set.std)


def tiny_model(cfg, target, channels=3) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    patch_dim = cfg["model"]["patch_size"] ** 2 * channels
    return MaskedAutoencoderViT(img_size=cfg["data"]["img_size"], patch_size=cfg["model"]["patch_size"],
                                in_chans=channels, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                                decoder_depth=1, decoder_num_heads=2, target_dim=target.out_dim(patch_dim))


# ----------------------------------------------------------------------------- pca
def test_pca_basis_is_orthonormal_and_beats_a_random_projection_on_held_out_patches(tiny_base):
    cfg, train_set = setup(tiny_base, "pca")
    target = create_target("pca", cfg["pretrain"]["target_params"], train_set=train_set, cfg=cfg)
    k = 12
    assert target.basis.shape == (48, k) and target.out_dim(48) == k
    assert torch.allclose(target.basis.T @ target.basis, torch.eye(k), atol=1e-5)
    held_out = images_of(create_dataset(cfg["data"], "test"), cfg, 200)
    coded = target.targets(held_out, None)
    assert coded.shape == (200, 16, k)
    patches = patchify(held_out, 4)
    pca_error = ((coded @ target.basis.T + target.mean - patches) ** 2).mean()
    random_basis, _ = torch.linalg.qr(torch.randn(48, k, generator=torch.Generator().manual_seed(0)))
    centred = patches - target.mean
    random_error = ((centred @ random_basis @ random_basis.T - centred) ** 2).mean()
    assert pca_error < 0.7 * random_error
    assert 0 < target.stats["explained_variance"] <= 1


def test_pca_components_above_the_patch_dimension_is_a_config_error(tiny_base):
    cfg, train_set = setup(tiny_base, "pca", {})  # the paper's 96 > 4·4·3 = 48
    with pytest.raises(ConfigError) as error:
        create_target("pca", cfg["pretrain"]["target_params"], train_set=train_set, cfg=cfg)
    message = str(error.value)
    assert "\n" not in message and "pretrain.target_params.components" in message and "allowed: 1..48" in message


# ----------------------------------------------------------------------------- dvae_token
def test_tokenizer_is_trained_once_then_loaded_from_the_cache(tiny_base, tmp_path, monkeypatch):
    calls = []
    train = tokenizer.train_tokenizer  # build_dvae_token looks it up in bench.targets.tokenizer
    monkeypatch.setattr(tokenizer, "train_tokenizer", lambda *args: calls.append(1) or train(*args))
    cfg, train_set = setup(tiny_base, "dvae_token")
    params = cfg["pretrain"]["target_params"]
    first = create_target("dvae_token", params, train_set=train_set, cfg=cfg, cache_dir=tmp_path)
    entries = list((tmp_path / "targets").glob("*.pt"))
    assert len(calls) == 1 and len(entries) == 1
    assert 0.5 < first.stats["codebook_usage"] <= 1  # the codes are actually used
    assert first.stats["recon_mse"] < 0.75 * first.stats["patch_variance"]  # (k-means on pixels: 0.3)
    second = create_target("dvae_token", params, train_set=train_set, cfg=cfg, cache_dir=tmp_path)
    assert len(calls) == 1  # loaded, not trained again
    for a, b in zip(first.tokenizer.state_dict().values(), second.tokenizer.state_dict().values()):
        assert torch.equal(a, b)
    create_target("dvae_token", {**params, "seed": 1}, train_set=train_set, cfg=cfg, cache_dir=tmp_path)
    assert len(calls) == 2 and len(list((tmp_path / "targets").glob("*.pt"))) == 2


def test_token_ids_and_cross_entropy_only_on_masked_patches(tiny_base):
    cfg, train_set = setup(tiny_base, "dvae_token")
    rng_before = torch.get_rng_state()
    target = create_target("dvae_token", cfg["pretrain"]["target_params"], train_set=train_set, cfg=cfg)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the run's model init does not depend on the cache
    ids = target.targets(images_of(train_set, cfg, 6), None)
    assert ids.shape == (6, 16) and ids.dtype == torch.long
    assert 0 <= ids.min() and ids.max() < 32 and target.out_dim(48) == 32
    mask = masking.generate("random", 6, (4, 4), 0.75, {}, torch.Generator().manual_seed(0))
    pred = torch.randn(6, 16, 32)
    other = ids.clone()
    other[~mask] = (other[~mask] + 1) % 32
    assert torch.equal(target.loss(pred, ids, mask), target.loss(pred, other, mask))
    other[mask] = (other[mask] + 1) % 32
    assert not torch.equal(target.loss(pred, ids, mask), target.loss(pred, other, mask))


# ----------------------------------------------------------------------------- hog
def test_hog_dimension_and_its_response_to_flat_images_and_edges(tiny_base):
    cfg, _ = setup(tiny_base, "hog")
    target = create_target("hog", cfg["pretrain"]["target_params"], cfg=cfg)
    assert target.cell == 2 and target.out_dim(48) == 3 * 2 * 2 * 9  # 4 px patches, 2 px cells, 9 bins
    assert target.targets(torch.randn(2, 3, 16, 16), None).shape == (2, 16, 108)
    assert torch.equal(hog_features(torch.full((2, 3, 16, 16), 0.7), 4, 2, 9), torch.zeros(2, 16, 108))
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1.0  # a vertical edge between patch columns 1 and 2
    features = hog_features(step, 4, 2, 9).view(1, 4, 4, 2, 2, 9)  # rows, columns, cell y, cell x, bin
    edge = features[0, :, 1:3]
    assert (edge[..., 0].sum() > 0) and (edge[..., 1:] == 0).all()  # only the horizontal-gradient bin
    assert (features[0, :, 2, :, 0, 0] > 0).all()  # the patch right of the edge sees its left neighbour
    assert (features[0, :, [0, 3]] == 0).all()
    horizontal = hog_features(step.transpose(2, 3), 4, 2, 9).view(1, 4, 4, 2, 2, 9)
    assert (horizontal[0, 1:3, :, ..., 4].sum() > 0) and (horizontal[..., :4] == 0).all()


def test_hog_cell_must_divide_the_patch(tiny_base):
    cfg, _ = setup(tiny_base, "hog", {"cell": 3})
    with pytest.raises(ConfigError, match=r"pretrain\.target_params\.cell: 3 does not divide .*allowed: null or one of 1, 2, 4"):
        create_target("hog", cfg["pretrain"]["target_params"], cfg=cfg)


# ----------------------------------------------------------------------------- all new targets
@pytest.mark.parametrize("name", ["pca", "dvae_token", "hog"])
def test_full_and_masked_only_prediction_give_the_same_loss(tiny_base, name):
    cfg, train_set = setup(tiny_base, name)
    target = create_target(name, cfg["pretrain"]["target_params"], train_set=train_set, cfg=cfg)
    model = tiny_model(cfg, target)
    x = images_of(train_set, cfg, 5)
    mask = masking.generate("random", 5, (4, 4), 0.75, {}, torch.Generator().manual_seed(1))
    loss_full, pred_full = model(x, mask, target)
    loss_masked, pred_masked = model(x, mask, target, full_pred=False)
    assert pred_full.shape == (5, 16, target.out_dim(48)) and pred_masked.shape == (5, 12, target.out_dim(48))
    assert torch.allclose(loss_full, loss_masked, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["pca", "dvae_token", "hog"])
def test_one_epoch_of_pretraining_end_to_end(tiny_base, tmp_path, name):
    tiny_base["pretrain"].update(epochs=1, warmup_epochs=0)
    tiny_base["data"]["train_limit"] = 256
    cfg, train_set = setup(tiny_base, name)
    model, stats = pretrain(cfg, train_set, torch.device("cpu"), cache_dir=tmp_path)
    assert math.isfinite(stats["final_loss"])
    width = {"pca": 12, "dvae_token": 32, "hog": 108}[name]
    assert model.decoder_pred.out_features == width
    assert len(list((tmp_path / "targets").glob("*.pt"))) == (0 if name == "hog" else 1)


# ----------------------------------------------------------------------------- params
def test_params_get_defaults_and_pixel_targets_stay_without_params(tiny_base):
    assert resolve(tiny_base)["pretrain"]["target_params"] == {}
    assert targets.resolve_params("pca", {}) == {"components": 96, "fit_patches": 100_000}
    assert targets.resolve_params("hog", {"bins": 6}) == {"bins": 6, "cell": None}
    assert targets.resolve_params("dvae_token", {"lr": 1})["lr"] == 1.0
    with pytest.raises(ConfigError, match=r"lr: '3e-4' is a quoted number"):  # specs read 3e-4 as a float (YAML 1.2)
        targets.resolve_params("dvae_token", {"lr": "3e-4"})


@pytest.mark.parametrize("name, params, key, allowed", [
    ("pixel", {"component": 3}, "component", "allowed: none"),  # another target's key is left out instead
    ("pca", {"component": 3}, "component", "allowed: components, fit_patches"),
    ("pca", {"components": 0}, "components", "allowed: int >= 1"),
    ("pca", {"components": "many"}, "components", "wrong type"),
    ("dvae_token", {"lr": 0.0}, "lr", "allowed: float 0.0 < x < inf"),
    ("dvae_token", {"vocab_size": 64, "fit_patches": 10}, "fit_patches", "allowed: >= vocab_size"),
    ("hog", {"bins": 0}, "bins", "allowed: int >= 1"),
    ("hog", {"cell": 1.5}, "cell", "wrong type"),
])
def test_bad_params_are_one_line_config_errors_naming_the_key(tiny_base, name, params, key, allowed):
    tiny_base["pretrain"].update(target=name, target_params=params)
    with pytest.raises(ConfigError) as error:
        resolve(tiny_base)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"pretrain.target_params.{key}: ") and allowed in message


def test_fitted_targets_need_the_training_set_and_config():
    assert create_target("pixel").out_dim(48) == 48 and create_target("norm_pixel").out_dim(48) == 48
    for name in ("pca", "dvae_token", "hog"):
        with pytest.raises(ValueError, match=f"target '{name}' needs"):
            create_target(name)


def test_the_registry_lists_the_targets_and_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys, bench.targets as t; print(t.list_targets(), t.resolve_params('pca', {})); "
            "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("('pixel', 'norm_pixel', 'pca', 'dvae_token', 'dalle_token', 'hog') {'components': 96")
    with pytest.raises(ConfigError, match=r"^pretrain\.target: 'jpeg' is not allowed; allowed: pixel, norm_pixel, "):
        targets.resolve_params("jpeg", {})
