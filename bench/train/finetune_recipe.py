"""The rest of MAE's fine-tune recipe (MAE Table 9; the official main_finetune.py), from timm's
pieces: RandAugment, random erasing, and mixup / cutmix with soft targets
(SoftTargetCrossEntropy), each off at its default (`evals.finetune.rand_augment`, `reprob`,
`mixup`, `cutmix`).

    FinetuneRecipe(ecfg, dataset, img_size, seed)   what a fine-tune batch gets on top of the crop;
                                                   `active` is False when every key is at its default
                                                   (the fine-tune then never enters this module)
    seeded_globals(seed, epoch, step, device)      the global RNGs timm draws from, seeded per step
    check_rand_augment(text)                       timm's parse of a config string, as a ConfigError

The order is the official pipeline's: crop (bench.data.augment, its torch.Generator) → RandAugment
(per sample, on 8-bit PIL images) → normalise → random erasing (mode 'pixel', one box) → mixup or
cutmix of the whole batch (before any micro-batches), targets smoothed by label_smoothing.
timm draws from Python's and NumPy's global RNGs (and torch's, for the erased pixels); each
step seeds them from (seed, epoch, step) and puts their states back afterwards, so a run is
deterministic and drop path's torch stream is the one it would be without the recipe.

Clips (B×C×T×H×W): every frame of a clip gets its clip's RandAugment ops and magnitudes, its
erased box and its mixup partner, lambda and cutmix box (frames folded into the channels), as
every frame gets its clip's crop.

RandAugment runs on the CPU in the training process, one image (or frame) at a time, where the
official code runs it in the data loader's workers: measured here, about 5.6 ms per 224 px image
on one busy core with all four on — seconds per batch of 1024 at the paper's scale.
"""
from __future__ import annotations

import random
import re
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from bench.core.errors import ConfigError
from bench.data.augment import augment, normalize

MIXUP_PROB, SWITCH_PROB = 1.0, 0.5   # main_finetune.py: --mixup_prob 1.0, --mixup_switch_prob 0.5
ERASE_MODE, ERASE_COUNT = "pixel", 1  # main_finetune.py: --remode pixel, --recount 1
KEY = "evals.finetune.rand_augment"


def check_rand_augment(text: str) -> None:
    """A one-line ConfigError unless timm's rand_augment_transform parses `text` ("rand-m9-mstd0.5-inc1"):
    'rand', then dash-separated sections m (magnitude), n (ops), p, mstd, mmax, inc, t (op set)."""
    _rand_augment(text, 3, 32, (0.5, 0.5, 0.5))


def _rand_augment(text: str, channels: int, img_size: int, mean):
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import str_to_pil_interp

    allowed = "a timm RandAugment string such as rand-m9-mstd0.5-inc1 (sections m, n, p, mstd, mmax, inc, t)"
    sections = text.split("-")
    skipped = [s for s in sections[1:] if not s.startswith("t") and not re.search(r"\d", s)]
    if sections[0] != "rand" or skipped:  # timm would skip a section without a number silently
        raise ConfigError(KEY, f"{text!r} is not allowed; allowed: {allowed}")
    # create_transform's hyper-parameters: translate 45% of the side, fill with the mean, bicubic
    fill = tuple(min(255, round(255 * m)) for m in mean)
    hparams = dict(translate_const=int(img_size * 0.45), img_mean=fill if channels == 3 else fill[:1],
                   interpolation=str_to_pil_interp("bicubic"))
    try:
        transform = rand_augment_transform(text, hparams)
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        raise ConfigError(KEY, f"{text!r} is not allowed ({err or 'not parsed by timm'}); allowed: {allowed}") from None
    for op in transform.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return transform


def _posterize(img, bits_to_keep, **kwargs):
    """timm's posterize, with 0 bits as the black image older Pillow gave: PosterizeIncreasing keeps
    4 - int(magnitude / 10 * 4) bits, 0 once the magnitude noise reaches 10 (about 2% of its draws
    at m9-mstd0.5), and Pillow 13 refuses bits outside 1..8 (a ValueError mid-run)."""
    from PIL import Image
    from timm.data.auto_augment import posterize

    return Image.new(img.mode, img.size) if bits_to_keep <= 0 else posterize(img, bits_to_keep, **kwargs)


def _seed_of(*numbers: int) -> int:
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


@contextmanager
def seeded_globals(seed: int, epoch: int, step: int, device):
    """Python's, NumPy's and torch's global RNGs (torch's of the CPU and of `device`) seeded from
    (seed, epoch, step) inside the block; all three are put back as they were when it ends."""
    device = torch.device(device)
    state = random.getstate(), np.random.get_state()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        s = _seed_of(seed, epoch, step)
        random.seed(s)
        np.random.seed(s)
        torch.default_generator.manual_seed(s)
        if cuda:
            torch.cuda.manual_seed(s)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def _folded(x: torch.Tensor) -> torch.Tensor:
    """Clips B×C×T×H×W as B×(C·T)×H×W (a view): what a clip gets, each of its frames gets."""
    return x.view(x.shape[0], -1, *x.shape[-2:]) if x.dim() == 5 else x


class FinetuneRecipe:
    """RandAugment, random erasing and mixup / cutmix for one fine-tune, as its config section says."""

    def __init__(self, ecfg: dict, dataset, img_size: int, seed: int):
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing

        self.preset, self.img_size, self.dataset, self.seed = ecfg["augmentation"], img_size, dataset, seed
        self.rand_augment = None
        if ecfg["rand_augment"] is not None:
            if dataset.channels not in (1, 3):
                raise ConfigError(KEY, f"needs images of 1 or 3 channels, not {dataset.channels}; allowed: null")
            self.rand_augment = _rand_augment(ecfg["rand_augment"], dataset.channels, img_size, dataset.mean)
        self.erasing = RandomErasing(ecfg["reprob"], mode=ERASE_MODE, max_count=ERASE_COUNT, device="cpu") \
            if ecfg["reprob"] > 0 else None
        self.mixup = Mixup(mixup_alpha=ecfg["mixup"], cutmix_alpha=ecfg["cutmix"], prob=MIXUP_PROB,
                           switch_prob=SWITCH_PROB, mode="batch", label_smoothing=ecfg["label_smoothing"],
                           num_classes=dataset.num_classes) if ecfg["mixup"] > 0 or ecfg["cutmix"] > 0 else None
        self.label_smoothing = ecfg["label_smoothing"]

    @property
    def active(self) -> bool:
        return any(p is not None for p in (self.rand_augment, self.erasing, self.mixup))

    def criterion(self) -> nn.Module:
        """SoftTargetCrossEntropy on mixed, smoothed targets; else cross-entropy with label smoothing."""
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy() if self.mixup is not None else \
            nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def __call__(self, images: torch.Tensor, y: torch.Tensor, gen, epoch: int, step: int) -> tuple:
        """One batch: uint8 images → normalised inputs, and targets (B×classes when mixed)."""
        x = augment(images, self.preset, self.img_size, gen,  # the crop draws what it draws without the recipe
                    cropped=self.dataset.crops_in_loader)
        with seeded_globals(self.seed, epoch, step, x.device):
            if self.rand_augment is not None:
                x = self.apply_rand_augment(x)
            x = normalize(x, self.dataset.mean, self.dataset.std)
            if self.erasing is not None:
                self.erasing.device = x.device
                self.erasing(_folded(x))  # in place, per sample (per clip: the same box on every frame)
            if self.mixup is not None:
                if len(x) % 2:
                    raise ConfigError("evals.finetune.batch_size", f"is {len(x)} images here (the training set's "
                                      "size); mixup and cutmix pair a batch with its reverse; allowed: an even batch")
                _, y = self.mixup(_folded(x), y)  # x mixed in place
        return x, y

    def apply_rand_augment(self, x: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment on each sample as an 8-bit PIL image (different ops per sample, from the
        global RNGs); a clip's frames each replay the clip's draws, so they get the same ops."""
        from PIL import Image

        u8 = x.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()
        clips = u8.dim() == 5
        frames = u8.permute(0, 2, 3, 4, 1) if clips else u8.permute(0, 2, 3, 1)[:, None]  # B×T×H×W×C
        out = np.empty(tuple(frames.shape), dtype=np.uint8)
        for b, clip in enumerate(frames.numpy()):
            start = random.getstate(), np.random.get_state()
            for t, frame in enumerate(clip):
                if t:  # the clip's draws again
                    random.setstate(start[0])
                    np.random.set_state(start[1])
                image = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
                out[b, t] = np.asarray(self.rand_augment(image)).reshape(frame.shape)
        back = torch.from_numpy(out).to(x.device)
        back = back.permute(0, 4, 1, 2, 3) if clips else back[:, 0].permute(0, 3, 1, 2)
        return back.float().div_(255).contiguous()
