"""What a resolved config's method, model preset, head and loss must agree on: the checks across
keys that `bench.study.config.resolve` runs after filling in the preset's numbers. Each raises a
one-line ConfigError naming the key and what is allowed.

    resolve_head(cfg)        model.head: null becomes the method's paper's head; others checked
    check_arch(cfg, arch)    a ViT preset takes no Swin key and the reverse; a Swin's numbers fit
    check_loss(cfg)          pretrain.loss only for a float target; `none` masking needs loss_on all
    check_video(cfg)         data.frames set ⇔ a video dataset ⇔ a method that takes clips (VideoMAE)
"""
from __future__ import annotations

from bench import targets
from bench.core.errors import ConfigError
from bench.core.options import short_repr
from bench.data import dataset_entry, list_datasets
from bench.masking import TEMPORAL
from bench.methods import list_methods, method_heads, method_takes_clips

HEADS = ("decoder", "linear", "mlp")  # model.head; which a method takes: bench.methods.method_heads
LOSSES = ("mse", "l1", "smooth_l1")  # pretrain.loss of a float target (bench.targets.pixels)
VIT_KEYS = ("depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
SWIN_KEYS = ("depths", "stage_num_heads", "window_size")  # a preset's `arch` says which it takes
CNN_KEYS = ("backbone", "sparse", "densify", "hierarchical")  # SparK's (bench.methods.spark), arch cnn
CNN_FAMILIES = ("resnet", "convnext")  # the timm families whose stages bench.methods.spark walks


def resolve_head(cfg: dict) -> None:
    """model.head: null becomes the method's paper's head; one it does not take is an error; the
    decoder head needs the decoder's numbers (a preset without a decoder has them null)."""
    model, allowed = cfg["model"], method_heads(cfg["method"])
    if model["head"] is None:
        model["head"] = allowed[0]
    elif model["head"] not in allowed:
        raise ConfigError("model.head", f"{model['head']!r} is not a head of method {cfg['method']}; "
                                        f"allowed: {', '.join(allowed)}")
    if model["head"] == "decoder" and model.get("backbone") is None:  # a CNN's decoder is SparK's UNet
        for key in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            if model[key] is None:
                raise ConfigError(f"model.{key}", f"is null (preset {model['preset']} has no decoder) but "
                                                  f"model.head is decoder; allowed: an int >= 1")
    if model["mask_token_in_encoder"] and cfg["method"] != "mae":
        raise ConfigError("model.mask_token_in_encoder", f"is MAE's switch; method {cfg['method']} always "
                                                         "has [M] in the encoder; allowed: false")


def check_arch(cfg: dict, arch: str) -> None:
    """A ViT preset takes no Swin key and a Swin preset no ViT key. A Swin's numbers must fit the
    image (stage widths embed_dim × 2^i, the last stage's stride, every stage's windows), and
    what only a ViT has is refused: another head than linear, partial fine-tuning, the cls feature."""
    model, name = cfg["model"], cfg["model"]["preset"]
    if arch == "cnn":
        return _check_cnn(cfg)
    for key in CNN_KEYS:
        if model.get(key) is not None:
            raise ConfigError(f"model.{key}", f"is a CNN key (SparK) but preset {name} is not a CNN; allowed: null")
    for key in VIT_KEYS if arch == "swin" else SWIN_KEYS:
        if model[key] is not None:
            kind, other = ("a ViT", "a Swin") if arch == "swin" else ("a Swin", "a ViT")
            raise ConfigError(f"model.{key}", f"is {kind} key but preset {name} is {other}; allowed: null")
    if arch != "swin":
        return
    for key in ("depths", "stage_num_heads"):
        values = model[key] = list(model[key])
        if not values or any(type(v) is not int or not 1 <= v < 2 ** 31 for v in values):
            raise ConfigError(f"model.{key}", f"{short_repr(values)} is not allowed; allowed: a list of ints >= 1")
    depths, heads, window = model["depths"], model["stage_num_heads"], model["window_size"]
    if len(heads) != len(depths):
        raise ConfigError("model.stage_num_heads", f"has {len(heads)} values for {len(depths)} stages "
                                                   "(model.depths); allowed: one per stage")
    for i, h in enumerate(heads):
        if (model["embed_dim"] << i) % h:
            raise ConfigError("model.stage_num_heads", f"{h} does not divide stage {i + 1}'s width "
                                                       f"{model['embed_dim'] << i} (model.embed_dim x 2^{i})")
    img, patch = cfg["data"]["img_size"], model["patch_size"]
    if img % (patch << (len(depths) - 1)):
        raise ConfigError("data.img_size", f"{img} is not a multiple of the last stage's stride "
                                           f"{patch << (len(depths) - 1)} (model.patch_size x 2^(stages - 1))")
    for i in range(len(depths)):
        side = img // (patch << i)
        if side > window and side % window:
            raise ConfigError("model.window_size", f"{window} does not tile stage {i + 1}'s {side}x{side} grid; "
                                                   "allowed: a divisor of each stage's side, or at least it")
    _no_vit_only_settings(cfg, "Swin", "linear")


def _check_cnn(cfg: dict) -> None:
    """A CNN preset (SparK, bench.methods.spark): a timm ResNet or ConvNeXt, its stages' blocks
    `depths` (null: timm's) and first width `embed_dim` (null: timm's), the decoder's width
    decoder_embed_dim; patch_size = the last stage's stride, 4 × 2^(stages − 1) for a ResNet, 32 or
    8 for a ConvNeXt (4 stages; stem patch 4 or 1). The switches
    sparse / densify / hierarchical default to the paper's (true); only the decoder head and the
    average-pooled feature; no partial fine-tuning."""
    model, name = cfg["model"], cfg["model"]["preset"]
    for key in ("depth", "num_heads", "decoder_depth", "decoder_num_heads", "stage_num_heads", "window_size"):
        if model[key] is not None:
            raise ConfigError(f"model.{key}", f"is not a key of a CNN preset ({name}); allowed: null")
    if cfg["method"] != "spark":
        raise ConfigError("model.preset", f"{name} is a CNN preset; allowed with method spark only")
    backbone = model["backbone"]
    if not backbone or not backbone.startswith(CNN_FAMILIES):
        raise ConfigError("model.backbone", f"{backbone!r} is not allowed; allowed: a timm "
                                            f"{' or '.join(CNN_FAMILIES)} name")
    for key in ("sparse", "densify", "hierarchical"):
        if model[key] is None or cfg["baseline"] is not None:  # a baseline pre-trains nothing: the
            model[key] = True                                   # paper's, so the settings share it
    if model["depths"] is not None:
        values = model["depths"] = list(model["depths"])
        if not values or any(type(v) is not int or not 1 <= v < 2 ** 31 for v in values):
            raise ConfigError("model.depths", f"{short_repr(values)} is not allowed; allowed: a list of ints >= 1")
        if model["embed_dim"] is None:
            raise ConfigError("model.embed_dim", "is null but model.depths is set; allowed: the first stage's width")
    stages = len(model["depths"]) if model["depths"] is not None else 4
    if backbone.startswith("convnext"):  # timm's ConvNeXt has 4 stages; its stem's patch 4 (or 1) sets the stride
        if stages != 4:
            raise ConfigError("model.depths", f"has {stages} stages; allowed with a ConvNeXt: 4")
        if model["patch_size"] not in (8, 32):
            raise ConfigError("model.patch_size", f"{model['patch_size']} is not a ConvNeXt's last-stage stride; "
                                                  "allowed: 32 (stem patch 4) or 8 (stem patch 1)")
        stride = model["patch_size"]
    else:
        stride = 4 << (stages - 1)
        if model["patch_size"] != stride:
            raise ConfigError("model.patch_size", f"{model['patch_size']} is not the last stage's stride {stride} "
                                                  f"(4 x 2^(stages - 1), {stages} stages); allowed: {stride}")
    if model["decoder_embed_dim"] is None or model["decoder_embed_dim"] % stride:
        raise ConfigError("model.decoder_embed_dim", f"{model['decoder_embed_dim']!r} is not allowed; allowed: a "
                                                     f"multiple of {stride} (the UNet halves it per 2x upsampling)")
    _no_vit_only_settings(cfg, "CNN", "decoder")


def _no_vit_only_settings(cfg: dict, kind: str, head: str) -> None:
    """What only a ViT has, refused for a `kind` preset (Swin, CNN): another head than its one
    `head`, partial fine-tuning (it counts a ViT's blocks), the cls feature of an enabled eval."""
    if cfg["model"]["head"] not in (None, head):
        raise ConfigError("model.head", f"{cfg['model']['head']!r} is not a head of a {kind} preset; allowed: {head}")
    if cfg["evals"]["finetune"]["blocks"] is not None:
        raise ConfigError("evals.finetune.blocks", "partial fine-tuning counts a ViT's blocks; allowed with a "
                                                   f"{kind} preset: null")
    for section in ("linear_probe", "finetune", "knn"):
        if cfg["evals"][section]["enabled"] and cfg["evals"][section]["feature"] == "cls":
            raise ConfigError(f"evals.{section}.feature", f"'cls' is not allowed: a {kind} has no cls token; "
                                                          f"allowed with a {kind} preset: avgpool")


def check_loss(cfg: dict) -> None:
    """pretrain.loss only for a float target; 'none' masking (nothing hidden) only with loss_on all."""
    pcfg = cfg["pretrain"]
    if pcfg["loss"] is not None and targets.is_token_target(pcfg["target"]):
        raise ConfigError("pretrain.loss", f"{pcfg['loss']!r} does not apply to target {pcfg['target']} "
                                           "(cross-entropy over its tokens); allowed: null")
    if cfg["masking"]["strategy"] == "none" and pcfg["loss_on"] != "all":
        raise ConfigError("pretrain.loss_on", "is masked but masking.strategy none hides nothing; "
                                              "allowed with it: all")


VIDEO_TARGETS = ("pixel", "norm_pixel")  # a cube's pixels (VideoMAE's target), raw or normalised per cube
IMAGE_VALUES = (("data.frames", None), ("model.tubelet_size", None), ("data.frame_stride", 1))  # no video


def check_video(cfg: dict) -> None:
    """Clips or images, all or nothing: a method that takes clips (VideoMAE) needs data.frames, a
    multiple of model.tubelet_size, and a video dataset; an image method neither, nor a video key.
    VideoMAE predicts pixels (pixel, norm_pixel) and its evals read the mean-pooled tokens (avgpool)."""
    data, method, strategy = cfg["data"], cfg["method"], cfg["masking"]["strategy"]
    clip_methods = " or ".join(m for m in list_methods() if method_takes_clips(m))
    is_video = dataset_entry(data["name"]).video
    if not method_takes_clips(method):
        if is_video:
            raise ConfigError("data.name", f"{data['name']} holds clips but method {method} takes images; allowed: "
                                           f"an image dataset, or method {clip_methods}")
        for key, images in IMAGE_VALUES:
            value = cfg[key.split(".")[0]][key.split(".")[1]]
            if value != images:
                raise ConfigError(key, f"is {value} but method {method} takes images (data.name {data['name']}); "
                                       f"allowed: {'null' if images is None else images}")
        if strategy in TEMPORAL:
            raise ConfigError("masking.strategy", f"{strategy!r} masks whole frames: needs video: data.frames "
                                                  f"(method {clip_methods}); allowed on images: any other strategy")
        return
    frames, tubelet = data["frames"], cfg["model"]["tubelet_size"]
    if tubelet is None:
        raise ConfigError("model.tubelet_size", f"is null but method {method} cuts clips into cubes; allowed: >= 1")
    if not is_video:
        video_sets = ", ".join(d for d in list_datasets() if dataset_entry(d).video) or "none registered"
        raise ConfigError("data.name", f"{data['name']} holds images but method {method} takes clips; allowed: "
                                       f"a video dataset ({video_sets})")
    if frames is None or frames % tubelet:
        raise ConfigError("data.frames", f"{'is null' if frames is None else f'{frames} is not allowed'}: method "
                                         f"{method} takes clips of whole tubelets; allowed: a multiple of "
                                         f"model.tubelet_size {tubelet} (VideoMAE: 16)")
    if strategy in TEMPORAL and frames // tubelet < 2:
        raise ConfigError("masking.strategy", f"{strategy!r} masks whole time steps but data.frames {frames} / "
                                              f"model.tubelet_size {tubelet} is 1; allowed: >= 2 of them")
    if cfg["pretrain"]["target"] not in VIDEO_TARGETS:
        raise ConfigError("pretrain.target", f"{cfg['pretrain']['target']!r} is not a target of method {method}; "
                                             f"allowed: {', '.join(VIDEO_TARGETS)}")
    for section in ("linear_probe", "finetune", "knn"):
        if cfg["evals"][section]["enabled"] and cfg["evals"][section]["feature"] == "cls":
            raise ConfigError(f"evals.{section}.feature", f"'cls' is not allowed: method {method} has no cls "
                                                          "token; allowed: avgpool")
