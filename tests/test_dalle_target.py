"""The dalle_token target (BEiT's DALL-E tokenizer from a local encoder.pkl): a required path checked
at resolve time, BEiT's preprocessing (pixels back in [0, 1], half-size tokenizer input, map_pixels),
one token per model patch, the vocabulary check, a masked-only loss and a BEiT pre-training step.
The encoder is a fake: a stride-8 conv pickled whole with torch.save, as DALL-E's encoder.pkl is."""
import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench import masking
from bench.core.errors import ConfigError
from bench.data import create_dataset
from bench.data.augment import augment, normalize
from bench.study.config import resolve
from bench.targets import create_target, is_token_target
from bench.targets.dalle import DalleTokenTarget
from bench.train.pretrain import build_pretraining

VOCAB = 64
SMALL = {"data": {"name": "synthetic", "img_size": 16, "train_limit": 64, "test_limit": 32},
         "model": {"embed_dim": 32, "depth": 1, "num_heads": 2}}  # BEiT's tiny preset: 4 px patches, grid 4


def fake_encoder(path, vocab=VOCAB, stride=8, in_chans=3):
    """DALL-E's encoder as far as the target sees it: 3-channel pixels → vocab logits, 8× smaller."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(in_chans, vocab, kernel_size=stride, stride=stride))
    torch.save(encoder, path)  # the whole module pickled, like encoder.pkl
    return str(path)


def config(**pretrain):
    partial = {"method": "beit", **{k: dict(v) for k, v in SMALL.items()},
               "pretrain": {"target": "dalle_token", "batch_size": 32, "blr": 1e-3, **pretrain}}
    return resolve(partial)


def images_of(data_set, img_size, n=6):
    return normalize(augment(data_set.images[:n], "none", img_size, None), data_set.mean, data_set.std)


@pytest.mark.parametrize("params", [{}, {"encoder_path": None}, {"encoder_path": " "}, None])
def test_a_missing_encoder_path_is_a_one_line_config_error_at_resolve(params):
    pretrain = {} if params is None else {"target_params": params}
    with pytest.raises(ConfigError) as error:
        config(**pretrain)
    message = str(error.value)
    assert "\n" not in message and message.startswith("pretrain.target_params.encoder_path: ")
    assert "DALL-E's encoder.pkl on disk" in message and "never downloaded" in message


def test_resolve_fills_the_vocabulary_and_a_pixel_run_leaves_the_path_out(tmp_path):
    cfg = config(target_params={"encoder_path": "/somewhere/encoder.pkl"})
    assert cfg["pretrain"]["target_params"] == {"encoder_path": "/somewhere/encoder.pkl", "vocab_size": 8192}
    assert is_token_target("dalle_token")
    with pytest.raises(ConfigError, match=r"^pretrain\.loss: .*dalle_token"):  # cross-entropy, no float loss
        config(target_params={"encoder_path": "/somewhere/encoder.pkl"}, loss="l1")
    pixel = config(target="pixel", target_params={"encoder_path": "/somewhere/encoder.pkl"})
    assert pixel["pretrain"]["target_params"] == {}  # a spec varying the target sets it once


def test_one_token_per_model_patch_for_three_and_one_channel_images(tmp_path):
    path = fake_encoder(tmp_path / "encoder.pkl")
    cfg = config(target_params={"encoder_path": path, "vocab_size": VOCAB})
    train = create_dataset(cfg["data"], "train", None)  # synthetic: 3 channels
    target = create_target("dalle_token", cfg["pretrain"]["target_params"], train_set=train, cfg=cfg)
    assert target.size == 32 and target.out_dim(48) == VOCAB  # grid 4 × 8: the tokenizer sees 32 px
    ids = target.targets(images_of(train, 16), None)
    assert ids.shape == (6, 16) and ids.dtype == torch.long
    assert 0 <= ids.min() and ids.max() < VOCAB and ids.unique().numel() > 1
    # 1-channel data (Fashion-MNIST's stats): the grey image is repeated to 3 channels
    gray = SimpleNamespace(channels=1, mean=(0.2860,), std=(0.3530,))
    target = create_target("dalle_token", cfg["pretrain"]["target_params"], train_set=gray, cfg=cfg)
    pixels = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = target.targets(normalize(pixels, gray.mean, gray.std), None)
    assert ids.shape == (5, 16) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < VOCAB
    rgb = SimpleNamespace(channels=3, mean=gray.mean * 3, std=gray.std * 3)
    as_rgb = create_target("dalle_token", cfg["pretrain"]["target_params"], train_set=rgb, cfg=cfg)
    assert torch.equal(ids, as_rgb.targets(normalize(pixels.expand(-1, 3, -1, -1), rgb.mean, rgb.std), None))


class Recorder(nn.Module):
    """Keeps what it was given; logits that put token (patch index mod vocab) first."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.seen = vocab, None

    def forward(self, x):
        self.seen = x
        b, _, h, w = x.shape
        ids = torch.arange((h // 8) * (w // 8)).view(1, h // 8, w // 8) % self.vocab
        return nn.functional.one_hot(ids, self.vocab).permute(0, 3, 1, 2).float().expand(b, -1, -1, -1)


def test_the_encoder_sees_beits_input_and_tokens_follow_the_patch_order():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    target = DalleTokenTarget(Recorder(VOCAB), VOCAB, grid=4, mean=mean, std=std)
    pixels = torch.full((2, 3, 16, 16), 0.25)
    pixels[:, 1] = 1.0  # the top of [0, 1]
    ids = target.targets(normalize(pixels, mean, std), None)
    seen = target.encoder.seen
    assert seen.shape == (2, 3, 32, 32) and seen.dtype == torch.float32
    assert torch.allclose(seen[:, 0], torch.tensor(0.25 * 0.8 + 0.1)) and torch.allclose(seen[:, 1], torch.tensor(0.9))
    assert torch.equal(ids, torch.arange(16).expand(2, -1))  # row-major, as the model's patches


def test_a_vocabulary_or_grid_that_does_not_match_the_encoder_is_a_clear_error(tmp_path):
    path = fake_encoder(tmp_path / "encoder.pkl")
    cfg = config(target_params={"encoder_path": path})  # DALL-E's 8192, the encoder has 64
    train = SimpleNamespace(channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ConfigError) as error:
        create_target("dalle_token", cfg["pretrain"]["target_params"], train_set=train, cfg=cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith("pretrain.target_params.vocab_size: 8192 does not match")
    assert "64 output channels" in message and "allowed: 64" in message
    coarse = fake_encoder(tmp_path / "stride4.pkl", stride=4)  # 8×8 tokens for a 4×4 patch grid
    with pytest.raises(ConfigError, match=r"^pretrain\.target_params\.encoder_path: .*8×8 token grid, not the "
                                          r"model's 4×4 patches"):
        create_target("dalle_token", {"encoder_path": coarse, "vocab_size": VOCAB}, train_set=train, cfg=cfg)
    with pytest.raises(ConfigError, match=r"^pretrain\.target_params\.encoder_path: .* is not a file"):
        create_target("dalle_token", {"encoder_path": str(tmp_path / "nope.pkl")}, train_set=train, cfg=cfg)
    torch.save(nn.Conv2d(3, VOCAB, 8, 8).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match=r"holds a OrderedDict, not a pickled module"):
        create_target("dalle_token", {"encoder_path": str(tmp_path / "weights.pt")}, train_set=train, cfg=cfg)


def test_an_encoder_whose_package_is_missing_says_pip_install_dalle(tmp_path, monkeypatch):
    module = types.ModuleType("fake_dall_e_for_test")

    class Encoder(nn.Sequential):
        pass

    Encoder.__module__, Encoder.__qualname__ = module.__name__, "Encoder"
    module.Encoder = Encoder
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save(Encoder(nn.Conv2d(3, VOCAB, 8, 8)), tmp_path / "encoder.pkl")
    monkeypatch.delitem(sys.modules, module.__name__)  # as if dall_e were not installed
    cfg = config(target_params={"encoder_path": str(tmp_path / "encoder.pkl"), "vocab_size": VOCAB})
    train = SimpleNamespace(channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ModuleNotFoundError) as error:
        create_target("dalle_token", cfg["pretrain"]["target_params"], train_set=train, cfg=cfg)
    message = str(error.value)
    assert "\n" not in message and "pip install DALL-E" in message and "fake_dall_e_for_test" in message


def test_the_loss_ignores_visible_patches(tmp_path):
    path = fake_encoder(tmp_path / "encoder.pkl")
    cfg = config(target_params={"encoder_path": path, "vocab_size": VOCAB})
    train = create_dataset(cfg["data"], "train", None)
    target = create_target("dalle_token", cfg["pretrain"]["target_params"], train_set=train, cfg=cfg)
    ids = target.targets(images_of(train, 16), None)
    mask = masking.generate("random", 6, (4, 4), 0.75, {}, torch.Generator().manual_seed(0))
    pred = torch.randn(6, 16, VOCAB, generator=torch.Generator().manual_seed(1))
    other = ids.clone()
    other[~mask] = (other[~mask] + 1) % VOCAB
    assert torch.equal(target.loss(pred, ids, mask), target.loss(pred, other, mask))
    other[mask] = (other[mask] + 1) % VOCAB
    assert not torch.equal(target.loss(pred, ids, mask), target.loss(pred, other, mask))


def test_a_beit_pretraining_step_runs_with_it(tmp_path):
    path = fake_encoder(tmp_path / "encoder.pkl")
    cfg = config(target_params={"encoder_path": path, "vocab_size": VOCAB})
    train = create_dataset(cfg["data"], "train", None)
    _, model, step = build_pretraining(cfg, train, torch.device("cpu"), cache_dir=tmp_path / "cache")
    assert model.head.pred.out_features == VOCAB
    images, _ = next(iter(train.batches(32, shuffle=False, seed=0, epoch=0, drop_last=True,
                                        device=torch.device("cpu"))))
    before = model.head.pred.weight.detach().clone()
    loss = step(images, 1e-3, torch.Generator().manual_seed(0))
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert not torch.equal(before, model.head.pred.weight)
    assert list(tmp_path.iterdir()) == [tmp_path / "encoder.pkl"]  # nothing cached (no cache folder made)
