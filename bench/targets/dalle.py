"""The `dalle_token` target: BEiT's tokenizer, DALL-E's dVAE encoder, read from a local
`encoder.pkl` the user already has (pretrain.target_params.encoder_path). Nothing is downloaded
and nothing is cached: the pickle is loaded when the target is built.

What BEiT does with it (paper section 2.1, official code's `get_codebook_indices`), done here on
the normalised images the model sees: undo the dataset's mean/std to pixels in [0, 1] (a
1-channel image repeated to 3 channels), resize bilinearly (antialiased when shrinking, as PIL;
BEiT resizes its crop with Lanczos) to half the model's side — (grid·8)² px, grid = img_size /
patch_size, so the encoder, which downsamples 8×, yields one token per model patch (112 px →
14×14 tokens for a 224 px model of 16 px patches) — map through DALL-E's
`map_pixels` (logit-Laplace: x·(1 − 2·0.1) + 0.1), and take the argmax of the encoder's logits
(B×vocab×h×w) as each patch's token. The encoder runs in fp32, without gradients, outside any
autocast (BEiT tokenises outside its autocast). Cross-entropy over `vocab_size` ids on the masked
patches, as `dvae_token`.

Unpickling DALL-E's encoder.pkl needs the `dall_e` package (pip install DALL-E); mimbench does not
depend on it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from bench.core.errors import ConfigError
from bench.targets import dalle_channels, dalle_encoder_path_is_set

LOGIT_LAPLACE_EPS = 0.1  # dall_e.utils.logit_laplace_eps
DOWNSAMPLE = 8           # DALL-E's encoder: three 2× max-pools
KEY = "pretrain.target_params.encoder_path"
WHAT = "the path of DALL-E's encoder.pkl on disk (never downloaded)"


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    """DALL-E's map_pixels: [0, 1] → [eps, 1 − eps] for its logit-Laplace likelihood."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def load_encoder(path: str, device: torch.device) -> torch.nn.Module:
    """The pickled encoder module at `path` on `device`, in eval mode, without gradients."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(KEY, f"{str(path)!r} is not a file; allowed: {WHAT}")
    try:
        encoder = torch.load(file, map_location=device, weights_only=False)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"unpickling {str(file)!r} ({KEY}) needs the module {err.name!r}, which is not installed: "
            f"pip install DALL-E (DALL-E's encoder.pkl is a pickle of dall_e's Encoder; mimbench does not "
            f"depend on it)", name=err.name) from None
    if not isinstance(encoder, torch.nn.Module):
        raise ConfigError(KEY, f"{str(file)!r} holds a {type(encoder).__name__}, not a pickled module; "
                               f"allowed: {WHAT} (a whole pickled encoder, not a state dict)")
    return encoder.to(device).eval().requires_grad_(False)


class DalleTokenTarget:
    """Predict the patch's token under DALL-E's dVAE encoder; cross-entropy over masked patches."""

    def __init__(self, encoder: torch.nn.Module, vocab_size: int, grid: int, mean, std, path: str = ""):
        self.encoder, self.vocab_size, self.grid, self.path = encoder, vocab_size, grid, path
        self.size = grid * DOWNSAMPLE  # the tokenizer's input side: half a 16 px-patch model's
        self.mean, self.std = tuple(mean), tuple(std)
        self._stats: dict = {}
        self.stats = {"tokenizer_px": self.size, "vocab_size": vocab_size}

    def out_dim(self, patch_dim: int) -> int:
        return self.vocab_size

    def tokenizer_input(self, imgs: torch.Tensor) -> torch.Tensor:
        """Normalised B×C×H×W images → B×3×size×size, pixels in [0, 1] through map_pixels."""
        key = str(imgs.device)
        if key not in self._stats:
            self._stats[key] = (torch.tensor(self.mean, device=imgs.device).view(1, -1, 1, 1),
                                torch.tensor(self.std, device=imgs.device).view(1, -1, 1, 1))
        mean, std = self._stats[key]
        x = (imgs.float() * std + mean).clamp_(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return map_pixels(x.clamp(0, 1))

    @torch.no_grad()
    def targets(self, imgs: torch.Tensor, model) -> torch.Tensor:
        """B×L token ids (L = grid², row-major as the model's patches)."""
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            logits = self.encoder(self.tokenizer_input(imgs))
        if tuple(logits.shape[1:]) != (self.vocab_size, self.grid, self.grid):
            raise ValueError(f"the encoder at {self.path} gave logits of shape {tuple(logits.shape)}; expected "
                             f"B×{self.vocab_size}×{self.grid}×{self.grid} (vocab × the model's patch grid)")
        return logits.argmax(dim=1).flatten(1)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred[mask], target[mask])


def build_dalle_token(params: dict, train_set, cfg: dict, cache_dir, device) -> DalleTokenTarget:
    dalle_encoder_path_is_set(params)  # create_target resolves params; said again for a direct call
    img_size, patch_size = cfg["data"]["img_size"], cfg["model"]["patch_size"]
    dalle_channels(params, patch_size, train_set.channels)
    grid = img_size // patch_size
    encoder = load_encoder(params["encoder_path"], device)
    target = DalleTokenTarget(encoder, params["vocab_size"], grid, train_set.mean, train_set.std,
                              params["encoder_path"])
    # one blank image through the encoder: its vocabulary and token grid must be the config's
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        logits = encoder(torch.full((1, 3, target.size, target.size), 0.5, device=device))
    if logits.dim() != 4:
        raise ValueError(f"the encoder at {params['encoder_path']} gave logits of shape {tuple(logits.shape)}; "
                         f"expected B×vocab×h×w")
    if logits.shape[1] != params["vocab_size"]:
        raise ConfigError("pretrain.target_params.vocab_size",
                          f"{params['vocab_size']} does not match the encoder's {logits.shape[1]} output channels "
                          f"({params['encoder_path']}); allowed: {logits.shape[1]}")
    if tuple(logits.shape[2:]) != (grid, grid):
        h, w = logits.shape[2:]
        raise ConfigError(KEY, f"the encoder turns a {target.size} px image into a {h}×{w} token grid, not the "
                               f"model's {grid}×{grid} patches (data.img_size {img_size} / model.patch_size "
                               f"{patch_size}); allowed: an encoder that downsamples {DOWNSAMPLE}x, as DALL-E's")
    return target
