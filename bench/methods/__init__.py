"""Pre-training methods: one registry, one file per method.

A method is a class in `bench/methods/<name>.py` that supplies, for a resolved run config:

    build_model(cfg, in_chans, target)   the pre-training model; its forward(imgs, mask, target,
                                         full_pred=False) returns (loss, prediction), the loss on the
                                         masked patches, or on all with pretrain.loss_on "all" (the
                                         target scores them: bench.targets)
    mask_grid(cfg)                       the (height, width) grid its masks are drawn on; for a
                                         method that takes clips, (T', height, width): T' time steps
                                         of tokens, masks drawn with frames=T' (bench.masking) and
                                         flattened to B×(T'·h·w), time-major, before the model sees them
    encoder_state(model)                 the weights the evals start from
    eval_encoder(cfg, state, num_classes, in_chans, feature, drop_path)
                                         a classifier over that encoder with the evals' interface
                                         (bench.train.evals.EvalEncoder: features, logits, layer ids)
    flops_per_image(model, ratio)        forward FLOPs of one pre-training image (or clip), by part

A method registered with `clips=True` (VideoMAE) pre-trains and is evaluated on video: uint8
clips B×C×T×H×W of data.frames frames, from a video dataset; every other method on images.

Its recipe (the paper's defaults and small profiles) is `ablations/<name>/_recipe.yaml`; its
paper's numbers are `bench/papers/<paper>.yaml`. Model presets (sizes) are registered here with
the method they belong to. This module imports no torch: the method's file is loaded on
first use (`create_method`), so planning a study stays quick.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.core.errors import ConfigError
from bench.core.registry import Registry, load

_METHODS = Registry("method", "method")
_PRESETS = Registry("model preset", "model.preset")


@dataclass(frozen=True)
class MethodEntry:
    name: str
    impl: str          # "module:Class" of the method
    paper: str | None  # bench/papers/<paper>.yaml
    doc: str = ""
    heads: tuple[str, ...] = ("decoder",)  # the prediction heads it takes (model.head); the first is its paper's
    clips: bool = False  # it takes video clips (data.frames set, a video dataset), not images


def register_method(name: str, impl: str, paper: str | None = None, doc: str = "",
                    heads: tuple[str, ...] = ("decoder",), clips: bool = False) -> MethodEntry:
    return _METHODS.add(name, MethodEntry(name, impl, paper, doc, tuple(heads), clips))


def method_takes_clips(name: str) -> bool:
    """True for a method that pre-trains on video clips (VideoMAE), False for one on images."""
    return _METHODS.get(name).clips


def method_heads(name: str) -> tuple[str, ...]:
    """The prediction heads `name` takes (model.head), its paper's first."""
    return _METHODS.get(name).heads


def list_methods() -> tuple[str, ...]:
    return _METHODS.names()


def create_method(name: str) -> Any:
    """An instance of the method `name` (its file imported now)."""
    return load(_METHODS.get(name).impl)()


def register_preset(name: str, method: str, **numbers) -> dict:
    """A model size of `method`: the numbers fill the run config's model section."""
    return _PRESETS.add(name, {"method": method, **numbers})


def list_presets(method: str | None = None) -> tuple[str, ...]:
    return tuple(n for n, p in _PRESETS.items() if method is None or p["method"] == method)


def preset(name: str, method: str | None = None) -> dict:
    """The preset's numbers (without its method); an error when it belongs to another method."""
    numbers = dict(_PRESETS.get(name))
    owner = numbers.pop("method")
    if method is not None and owner != method:
        raise ConfigError("model.preset", f"{name!r} is a {owner} preset; allowed with method {method}: "
                          f"{', '.join(list_presets(method))}")
    return numbers


# ----------------------------------------------------------------------------- MAE
register_method("mae", "bench.methods.mae:MAE", paper="mae",
                doc="MAE (He et al. 2022): visible patches only through the encoder, a light decoder")
# Small images (Fashion-MNIST, CIFAR) on a CPU: 8x8 patches of 4 px at 32 px input.
register_preset("mae_vit_tiny_patch4", "mae", patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0,
                decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3)
# The CIFAR-sized ViT used for speed comparisons with the official code.
register_preset("mae_vit_small_patch4", "mae", patch_size=4, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
                decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4)
# The paper's sizes (MAE section 4), with its 512-wide, 8-deep decoder.
register_preset("mae_vit_base_patch16", "mae", patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
register_preset("mae_vit_large_patch16", "mae", patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                mlp_ratio=4.0, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
register_preset("mae_vit_huge_patch14", "mae", patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                mlp_ratio=4.0, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)


# ----------------------------------------------------------------------------- BEiT and SimMIM
# Both run the encoder over all L patches with the masked ones replaced by a learned [M] token
# (bench/methods/masked_vit.py) and predict from its output tokens through a light head.
register_method("beit", "bench.methods.beit:BEiT", paper="beit", heads=("linear", "mlp", "decoder"),
                doc="BEiT (Bao et al. 2022): [M] in the encoder, a linear head to visual tokens, block masking")
register_method("simmim", "bench.methods.simmim:SimMIM", paper="simmim", heads=("linear", "mlp", "decoder"),
                doc="SimMIM (Xie et al. 2022): [M] in the encoder, a linear head to pixels, L1, coarse masks")
# The decoder numbers are used by the `decoder` head only (a small transformer over all tokens).
register_preset("beit_vit_tiny_patch4", "beit", patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0,
                decoder_embed_dim=None, decoder_depth=None, decoder_num_heads=None)
register_preset("beit_vit_base_patch16", "beit", patch_size=16, embed_dim=768, depth=12, num_heads=12,
                mlp_ratio=4.0, decoder_embed_dim=None, decoder_depth=None, decoder_num_heads=None)
register_preset("simmim_vit_tiny_patch4", "simmim", patch_size=4, embed_dim=128, depth=4, num_heads=4,
                mlp_ratio=4.0, decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3)
register_preset("simmim_vit_base_patch16", "simmim", patch_size=16, embed_dim=768, depth=12, num_heads=12,
                mlp_ratio=4.0, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
# SimMIM's Swin Transformer (bench/methods/swin.py; `arch: swin` selects it): a stage's width is
# embed_dim × 2^i and its heads stage_num_heads[i]; the last stage's stride is patch × 2^(stages − 1).
# Small images on a CPU: 2 px patches, a 16x16 grid at 32 px, windows of 4, stride 4.
register_preset("simmim_swin_tiny_patch2", "simmim", arch="swin", patch_size=2, embed_dim=48, depths=(2, 2),
                stage_num_heads=(3, 6), window_size=4, mlp_ratio=4.0)
# The paper's Swin-B at 192 px (official simmim_pretrain__swin_base__img192_window6): stride 32.
register_preset("simmim_swin_base_patch4", "simmim", arch="swin", patch_size=4, embed_dim=128, depths=(2, 2, 18, 2),
                stage_num_heads=(4, 8, 16, 32), window_size=6, mlp_ratio=4.0)


# ----------------------------------------------------------------------------- SparK
# A timm CNN made sparse (bench/methods/spark.py; `arch: cnn`): masks on the last stage's grid,
# patch_size = its stride 4 × 2^(stages − 1); depths / embed_dim (the first stage's width, doubling
# per stage) null = timm's own; decoder_embed_dim = the light UNet's width at the last stage.
register_method("spark", "bench.methods.spark:SparK", paper="spark",
                doc="SparK (Tian et al. 2023): a sparse CNN on the visible cells, a hierarchical UNet decoder")
# Small images on a CPU: a 4x4 mask grid at 32 px; the ResNet's two stages have stride 4, 8.
register_preset("spark_resnet_tiny", "spark", arch="cnn", backbone="resnet18", patch_size=8, depths=(1, 1),
                embed_dim=32, decoder_embed_dim=64)
# timm's ConvNeXt always has 4 stages: a 1 px stem patch makes them stride 1, 2, 4, 8.
register_preset("spark_convnext_tiny", "spark", arch="cnn", backbone="convnext_atto", patch_size=8,
                depths=(1, 1, 1, 1), embed_dim=16, decoder_embed_dim=64)
# The paper's (224 px, stride 32: a 7x7 mask grid); the official decoder width 768 (ResNet-18's 512: ours).
register_preset("spark_resnet18", "spark", arch="cnn", backbone="resnet18", patch_size=32, decoder_embed_dim=512)
register_preset("spark_resnet50", "spark", arch="cnn", backbone="resnet50", patch_size=32, decoder_embed_dim=768)
register_preset("spark_resnet101", "spark", arch="cnn", backbone="resnet101", patch_size=32, decoder_embed_dim=768)
register_preset("spark_convnext_small", "spark", arch="cnn", backbone="convnext_small", patch_size=32,
                decoder_embed_dim=768)
register_preset("spark_convnext_base", "spark", arch="cnn", backbone="convnext_base", patch_size=32,
                decoder_embed_dim=768)


# ----------------------------------------------------------------------------- VideoMAE
# A ViT over space-time cubes of tubelet_size frames × patch_size² px (bench.methods.videomae):
# the paper's tube masking at 90%, only the visible cubes through the encoder, a decoder of half
# the encoder's width and 4 blocks. Its clips: data.frames frames (a multiple of tubelet_size).
register_method("videomae", "bench.methods.videomae:VideoMAE", paper="videomae", clips=True,
                doc="VideoMAE (Tong et al. 2022): tube masking at 90% over space-time cubes, visible cubes "
                    "only through the encoder, a light decoder")
# Small clips on a CPU: 32 px, 8 px patches, tubelet 2 — 16 frames are 8 x 4 x 4 = 128 cubes (8 time
# steps, so frame masking at 87.5% hides 7 of 8 as in the paper); tube masking at 90% hides 14 of each
# step's 16 cubes (87.5%: the grid's nearest count) and leaves 8 x 2 = 16 for the encoder.
register_preset("videomae_vit_tiny_patch8", "videomae", patch_size=8, tubelet_size=2, embed_dim=128, depth=4,
                num_heads=4, mlp_ratio=4.0, decoder_embed_dim=64, decoder_depth=4, decoder_num_heads=2)
# The paper's (official pretrain_videomae_{small,base}_patch16_224): 16 frames of 224 px, 8 x 14 x 14 cubes.
register_preset("videomae_vit_small_patch16", "videomae", patch_size=16, tubelet_size=2, embed_dim=384, depth=12,
                num_heads=6, mlp_ratio=4.0, decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=3)
register_preset("videomae_vit_base_patch16", "videomae", patch_size=16, tubelet_size=2, embed_dim=768, depth=12,
                num_heads=12, mlp_ratio=4.0, decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6)
