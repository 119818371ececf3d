"""Batched augmentation: shapes, ranges, determinism, and what each preset does to an image."""
import pytest
import torch

from bench.data import list_augmentations
from bench.data.augment import augment, normalize, random_resized_boxes


def ramp(n=8, size=28):
    """Images whose pixel value is the column index: crops and flips are easy to read."""
    row = torch.linspace(0, 255, size).round().to(torch.uint8)
    return row.view(1, 1, 1, size).expand(n, 1, size, size).contiguous()


@pytest.mark.parametrize("preset", list_augmentations())
def test_shape_range_and_determinism(preset):
    x = torch.randint(0, 256, (16, 3, 28, 28), dtype=torch.uint8)
    a = augment(x, preset, 32, torch.Generator().manual_seed(0))
    b = augment(x, preset, 32, torch.Generator().manual_seed(0))
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)


def test_none_keeps_the_image():
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    assert torch.equal(augment(x, "none", 32, None), x.float() / 255)


def test_crops_flip_half_the_samples():
    out = augment(ramp(2000), "crop_fixed", 28, torch.Generator().manual_seed(0))
    increasing = (out[:, 0, 0, -1] > out[:, 0, 0, 0]).float().mean().item()
    assert 0.45 < increasing < 0.55


def test_crop_fixed_has_fixed_size():
    # a ramp cropped to 7/8 of its width spans 7/8 of the value range, wherever the crop is
    out = augment(ramp(64), "crop_fixed", 28, torch.Generator().manual_seed(1))
    span = (out[:, 0, 0, -1] - out[:, 0, 0, 0]).abs()
    assert torch.allclose(span, span[0].expand_as(span), atol=0.02)
    assert 0.8 < span[0].item() < 0.9


def test_random_resized_crop_scale_and_aspect():
    w, h = random_resized_boxes(20000, torch.Generator().manual_seed(0), "cpu")
    area, aspect = w * h, w / h
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1 + 1e-6
    assert aspect.min() >= 3 / 4 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5
    assert (w <= 1).all() and (h <= 1).all()
    assert 0.5 < area.mean().item() < 0.7  # uniform in [0.2, 1] minus the draws that did not fit


def test_color_jitter_changes_colors_not_geometry():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    plain = augment(x, "crop_rand", 32, torch.Generator().manual_seed(0))
    jitter = augment(x, "crop_color", 32, torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, jitter)


def test_normalize():
    x = torch.full((2, 3, 4, 4), 0.5)
    y = normalize(x, (0.5, 0.25, 0.0), (1.0, 0.25, 0.5))
    assert torch.allclose(y[:, 0], torch.zeros(1)) and torch.allclose(y[:, 1], torch.ones(1))
    assert torch.allclose(y[:, 2], torch.ones(1))


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="augmentation 'blur' is not one of none, crop_fixed, crop_rand, crop_color"):
        augment(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "blur", 4, None)
