"""bench.benchmarks: the fast path computes what the official-style path computes; the speed report and the
harness benchmark run. No timings."""
import copy
import math

import pytest
import torch
from torch import nn

from bench import masking
from bench.benchmarks.harness import bench_harness, harness_spec
from bench.benchmarks.official_mae import OfficialMAE, noise_for_mask, official_sincos_pos_embed
from bench.benchmarks.steps import fast_pretrain_kind, initial_weights, speed_config, speed_report, synthetic_set
from bench.core.patches import patchify
from bench.data.augment import augment, normalize
from bench.data.datasets import ImageSet, make_synthetic
from bench.methods.mae import Attention, MaskedAutoencoderViT, sincos_pos_embed
from bench.study.config import resolve
from bench.targets import create_target
from bench.train.evals import build_encoder, extract_features
from bench.train.optim import LARS
from bench.train.pretrain import SplitStep

DIMS = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)
TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def models(fused_attn: bool = False):
    torch.manual_seed(0)
    ours = MaskedAutoencoderViT(**DIMS)
    official = OfficialMAE(**DIMS, fused_attn=fused_attn)
    official.load_state_dict(ours.state_dict())  # same parameter names, the same weights
    return ours, official


def batch(n=6, seed=0, ratio=0.75):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    return x, masking.generate("random", n, (4, 4), ratio, {}, gen)


def test_official_pos_embed_matches_ours():
    for dim, grid in ((32, 4), (192, 8)):
        ours = sincos_pos_embed(dim, grid, cls_token=True)[0]
        assert torch.allclose(torch.from_numpy(official_sincos_pos_embed(dim, grid, True)).float(), ours, atol=1e-6)


def test_official_patchify_is_the_core_patchify():
    """The official reshape + einsum("nchpwq->nhwpqc") + reshape, which OfficialMAE now takes from bench.core.patches."""
    imgs = torch.randn(2, 3, 16, 16)
    x = torch.einsum("nchpwq->nhwpqc", imgs.reshape(2, 3, 4, 4, 4, 4)).reshape(2, 16, 48)
    assert torch.equal(patchify(imgs, 4), x)
    assert torch.equal(OfficialMAE(**DIMS).patchify(imgs), x)


def test_fast_kind_times_the_real_pretraining_step(monkeypatch):
    """pretrain_fast and its ablations call bench.train.pretrain.PretrainStep as the loop does (uint8
    batches, the base lr); each ablation changes the step it calls, not a copy of it."""
    from bench.train.pretrain import PretrainStep
    calls = []
    real = PretrainStep.__call__

    def spy(self, images, lr, gen):
        calls.append((self, images, lr))
        return real(self, images, lr, gen)

    monkeypatch.setattr(PretrainStep, "__call__", spy)
    cpu = torch.device("cpu")
    cfg = speed_config("mae_vit_tiny_patch4", 16, 8, 0.75, "fp32", TINY)
    train_set = synthetic_set(32, 3, 16)
    state, encoder_state, _ = initial_weights(cfg, train_set, cpu)
    assert set(encoder_state) < set(state) and not any(k.startswith("decoder") for k in encoder_state)
    predicted = {}
    for kwargs in ({}, {"fused": False}, {"full_pred": True}, {"split": False}, {"data": False}):
        calls.clear()
        kind = fast_pretrain_kind(cfg, train_set, cpu, state, **kwargs)
        kind.run(1)
        step, images, lr = calls[0]
        assert isinstance(step, PretrainStep) and images.dtype == torch.uint8 and images.shape == (8, 3, 16, 16)
        assert lr == pytest.approx(1.5e-4 * 8 / 256)
        shapes = []
        step.model.decoder_pred.register_forward_hook(lambda m, i, out: shapes.append(out.shape[1]))
        kind.run(2)
        predicted[tuple(kwargs)] = set(shapes)
        assert len(calls) == 3 and (kwargs != {"data": False} or calls[1][1] is calls[2][1])  # one fixed batch
        assert step.cfg["data"]["augmentation"] == ("none" if kwargs == {"data": False} else "crop_rand")
        assert kind.info["optimizer"] == ("AdamW (default)" if kwargs == {"fused": False} else
                                          f"AdamW ({'fused' if step.optimizer.defaults.get('fused') else 'foreach'})")
        assert kind.info["step_parts"] == step.split_step.parts == (1 if kwargs == {"split": False} else
                                                                    SplitStep.parts_for(cpu, 1))
        kind.close()
    assert predicted[("full_pred",)] == {17} and predicted[()] == {12}  # cls + all 16 patches, or the 12 masked


@pytest.mark.parametrize("ratio, fused_attn", [(0.75, False), (0.5, False), (0.75, True)])
def test_fast_path_loss_and_gradients_equal_the_official_path(ratio, fused_attn):
    """Against the official code on timm 0.3.2 (explicit attention) and on today's timm (fused)."""
    ours, official = models(fused_attn)
    assert all(b.attn.fused_attn == fused_attn for b in official.blocks)
    x, mask = batch(ratio=ratio)
    length, visible = mask.shape[1], mask.shape[1] - int(mask[0].sum())
    loss_off, pred_off, mask_off = official(x, mask_ratio=ratio, noise=noise_for_mask(mask), len_keep=visible)
    assert torch.equal(mask_off.bool(), mask)  # the official masking reproduces our mask
    loss_off.backward()
    loss, pred = ours(x, mask, create_target("norm_pixel"), full_pred=False)
    loss.backward()
    assert torch.allclose(loss, loss_off, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pred, pred_off[mask].view(len(x), length - visible, -1), atol=1e-5)
    grads_off = dict(official.named_parameters())
    for name, p in ours.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, grads_off[name].grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("shape", [(4, 17, 32, 2), (3, 65, 48, 4)])
def test_attention_equals_timms_bit_for_bit(shape):
    from timm.models.vision_transformer import Attention as TimmAttention
    batch_size, length, dim, heads = shape
    torch.manual_seed(0)
    timm_attn, ours = TimmAttention(dim, heads, qkv_bias=True), Attention(dim, heads, qkv_bias=True)
    ours.load_state_dict(timm_attn.state_dict())
    x = torch.randn(batch_size, length, dim, requires_grad=True)
    y1, y2 = timm_attn(x), ours(x)
    assert torch.equal(y1, y2)
    g1 = torch.autograd.grad((y1 ** 2).sum(), [x, timm_attn.qkv.weight, timm_attn.proj.bias])
    g2 = torch.autograd.grad((y2 ** 2).sum(), [x, ours.qkv.weight, ours.proj.bias])
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_masked_only_prediction_gives_the_same_loss_and_gradients():
    torch.manual_seed(1)
    full = MaskedAutoencoderViT(**DIMS)
    masked = copy.deepcopy(full)
    x, mask = batch(n=5, seed=3)
    for name in ("norm_pixel", "pixel"):
        target = create_target(name)
        full.zero_grad(), masked.zero_grad()
        loss_full, pred_full = full(x, mask, target)
        loss_masked, pred_masked = masked(x, mask, target, full_pred=False)
        assert pred_full.shape == (5, 16, 48) and pred_masked.shape == (5, 12, 48)
        assert torch.allclose(pred_masked, pred_full[mask].view(5, 12, 48), atol=1e-6)
        assert torch.allclose(loss_full, loss_masked, rtol=1e-6, atol=1e-7)
        loss_full.backward(), loss_masked.backward()
        for (n1, p1), (_, p2) in zip(full.named_parameters(), masked.named_parameters()):
            if p1.requires_grad:
                assert torch.allclose(p1.grad, p2.grad, rtol=1e-5, atol=1e-7), n1
    # forward_decoder's default is unchanged: every patch
    latent, ids_restore = masked.forward_encoder(x, mask)
    assert masked.forward_decoder(latent, ids_restore).shape == (5, 16, 48)


@pytest.mark.parametrize("target_name,parts,mask_token_in_encoder",
                         [("norm_pixel", 2, False), ("pixel", 3, False), ("norm_pixel", 2, True)])
def test_split_step_gives_the_batchs_loss_and_gradients(target_name, parts, mask_token_in_encoder):
    """One sub-batch per thread: the same loss and gradients as one forward and backward of the batch."""
    torch.manual_seed(2)
    whole = MaskedAutoencoderViT(**DIMS, mask_token_in_encoder=mask_token_in_encoder)
    split = copy.deepcopy(whole)
    x, mask = batch(n=7, seed=4)  # 7 does not split evenly: the parts' weights are their shares
    target = create_target(target_name)
    loss, _ = whole(x, mask, target, full_pred=False)
    loss.backward()
    step = SplitStep(split, parts)
    threads = torch.get_num_threads()
    split_loss = step(x, mask, target)
    assert torch.get_num_threads() == threads  # the process-wide setting is restored
    assert torch.allclose(split_loss, loss.detach(), rtol=1e-6, atol=1e-7)
    for (name, p1), (_, p2) in zip(whole.named_parameters(), split.named_parameters()):
        if p1.grad is None:
            assert p2.grad is None, name  # unused parameters stay without a gradient
        else:
            assert torch.allclose(p1.grad, p2.grad, rtol=1e-4, atol=1e-6), name
    first = [p.grad.clone() for p in split.parameters() if p.grad is not None]
    step(x, mask, target)  # the gradient is replaced, not accumulated, and the same every time
    assert all(torch.equal(a, p.grad) for a, p in zip(first, [p for p in split.parameters() if p.grad is not None]))
    step.close()


@pytest.mark.parametrize("parts", [1, 2])
def test_bf16_split_step_autocasts_in_every_part_and_stays_near_fp32(parts):
    torch.manual_seed(4)
    model = MaskedAutoencoderViT(**DIMS)
    x, mask = batch(n=6, seed=6)
    target = create_target("norm_pixel")
    fp32_loss = SplitStep(copy.deepcopy(model), 1)(x, mask, target)
    dtypes = []
    model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    step = SplitStep(model, parts, precision="bf16")
    loss = step(x, mask, target)
    step.close()
    assert dtypes == [torch.bfloat16] * parts  # autocast is per thread: each part entered its own
    assert loss.dtype == torch.float32 and torch.allclose(loss, fp32_loss, rtol=2e-2)
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.grad is not None)


def test_pretraining_in_bf16_trains_like_fp32():
    from bench.data import create_dataset
    from bench.train.pretrain import pretrain
    from conftest import TINY_BASE
    losses = {}
    for precision in ("fp32", "bf16"):
        config = resolve(copy.deepcopy(TINY_BASE) | {"pretrain": dict(TINY_BASE["pretrain"], precision=precision)})
        _, stats = pretrain(config, create_dataset(config["data"], "train"), torch.device("cpu"))
        losses[precision] = stats["final_loss"]
    assert math.isfinite(losses["bf16"]) and abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"]


@pytest.mark.slow
def test_compiled_pretraining_gives_the_eager_losses():
    """launch.compile: torch.compile of the pre-training forward computes the same losses (to
    float tolerance) as eager — the speed bench's pretrain_fast_compiled runs this path."""
    from bench.data import create_dataset
    from bench.train.pretrain import pretrain
    from conftest import TINY_BASE
    config = resolve(copy.deepcopy(TINY_BASE))
    train_set = create_dataset(config["data"], "train")
    rows = {True: [], False: []}
    for compiled in (False, True):
        pretrain(config, train_set, torch.device("cpu"), rows[compiled].append, compile=compiled)
    eager, compiled = [r["loss"] for r in rows[False]], [r["loss"] for r in rows[True]]
    assert len(eager) == config["pretrain"]["epochs"] == len(compiled)
    assert all(abs(a - b) < 1e-3 * abs(a) for a, b in zip(eager, compiled)), (eager, compiled)


def test_split_step_with_one_part_is_the_plain_backward():
    torch.manual_seed(3)
    whole = MaskedAutoencoderViT(**DIMS)
    split = copy.deepcopy(whole)
    x, mask = batch(n=4, seed=5)
    target = create_target("norm_pixel")
    loss, _ = whole(x, mask, target, full_pred=False)
    loss.backward()
    assert torch.equal(SplitStep(split, 1)(x, mask, target), loss.detach())
    for p1, p2 in zip(whole.parameters(), split.parameters()):
        assert (p1.grad is None and p2.grad is None) or torch.equal(p1.grad, p2.grad)
    assert SplitStep.parts_for(torch.device("cpu"), world=2) == 1  # DDP ranks keep .backward()


def test_cached_features_probe_equals_recomputing_them():
    """With augmentation none, training the probe head on cached features is training it on
    features recomputed every step: the same features, so the same losses and accuracy."""
    cfg = resolve({"data": {"name": "synthetic", "img_size": 16}, "model": {"preset": "mae_vit_tiny_patch4", **TINY}})
    images, labels, _ = make_synthetic("train", n=96, size=16)
    train = ImageSet("synthetic", torch.from_numpy(images), torch.from_numpy(labels), 10)
    torch.manual_seed(0)
    encoder = {k: v for k, v in MaskedAutoencoderViT(**{**DIMS, "decoder_depth": 1}).state_dict().items()
               if not k.startswith(("decoder_", "mask_token"))}
    vit = build_encoder(cfg, encoder, 10, 3, "cls")
    vit.requires_grad_(False)
    feats, feat_labels = extract_features(vit, train, 16, 40, "cpu")  # batches of 40: a different split

    def train_head(get_features):
        torch.manual_seed(0)
        head = nn.Sequential(nn.BatchNorm1d(32, affine=False, eps=1e-6), nn.Linear(32, 10))
        opt = LARS(head.parameters(), lr=0.05)
        losses = []
        for epoch in range(3):
            for idx in torch.randperm(96, generator=torch.Generator().manual_seed(epoch)).split(32):
                loss = nn.functional.cross_entropy(head(get_features(idx)), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        head.eval()
        with torch.no_grad():
            acc = (head(get_features(torch.arange(96))).argmax(1) == train.labels).float().mean().item()
        return losses, acc

    def recompute(idx):
        with torch.no_grad():
            return vit.features(normalize(augment(train.images[idx], "none", 16, None), train.mean, train.std))

    assert torch.equal(feat_labels, train.labels)
    assert torch.allclose(feats, recompute(torch.arange(96)), atol=1e-5)
    losses_cached, acc_cached = train_head(lambda idx: feats[idx])
    losses_recomputed, acc_recomputed = train_head(recompute)
    assert losses_cached == pytest.approx(losses_recomputed, rel=1e-4, abs=1e-5)
    assert acc_cached == acc_recomputed


def test_speed_report_runs_for_a_tiny_config():
    rows = speed_report("mae_vit_tiny_patch4", batch=16, ratio=0.75, steps=2, img_size=16, warmup=1,
                        model_overrides=TINY, workers=1, min_window_s=0.0)
    kinds = [r["kind"] for r in rows]
    assert kinds == ["pretrain_official", "pretrain_plain", "pretrain_fast", "encoder_forward",
                     "linear_probe_step_cached", "linear_probe_step_recomputed", "finetune_step"]
    for row in rows:
        assert {"kind", "images_per_s", "config"} <= set(row)
        assert row["images_per_s"] > 0 and len(row["window_images_per_s"]) == 2
        config = row["config"]
        assert config["encoder"] == {"dim": 32, "depth": 2, "heads": 2}
        assert config["decoder"] == {"dim": 16, "depth": 1, "heads": 2}
        assert {"batch", "ratio", "img", "device", "threads", "torch", "patch_size"} <= set(config)
        assert config["batch"] == 16 and config["img"] == 16 and config["threads"] == torch.get_num_threads()
    official, plain, fast = rows[0], rows[1], rows[2]
    assert official["ratio_to_official"] == 1.0 and plain["ratio_to_plain"] == 1.0
    assert fast["ratio_to_official"] > 0 and fast["ratio_to_plain"] > 0
    assert official["config"]["attention"].startswith("fused") and plain["config"]["attention"].startswith("explicit")
    assert plain["config"]["visible_tokens"] == fast["config"]["visible_tokens"] == 4  # the same tokens
    assert "ratio_to_recomputed" in rows[4]
    by_kind = {r["kind"]: r for r in rows}
    # GFLOP per image: a train step is 3 x its forward; fine-tuning the encoder is 3 x the feature pass
    assert by_kind["finetune_step"]["gflop_per_image"] == pytest.approx(
        3 * by_kind["encoder_forward"]["gflop_per_image"], rel=1e-3)
    assert official["gflop_per_image"] == fast["gflop_per_image"] > 0
    for name in ("encoder_forward", "finetune_step", "linear_probe_step_recomputed"):
        assert by_kind[name]["gflop_per_s_to_pretrain"] > 0
        assert by_kind[name]["gflop_per_s"] == pytest.approx(
            by_kind[name]["images_per_s"] * by_kind[name]["gflop_per_image"], rel=1e-2)


def test_speed_report_ablations_run_through_the_real_step():
    rows = speed_report("mae_vit_tiny_patch4", batch=16, steps=1, img_size=16, warmup=1, model_overrides=TINY,
                        workers=0, min_window_s=0.0, evals=False, ablations=True, precision="bf16")
    by_kind = {r["kind"]: r["config"] for r in rows}
    assert list(by_kind) == ["pretrain_official", "pretrain_plain", "pretrain_fast", "ablation:plain_without_data",
                             "ablation:fast_without_data", "ablation:fast_default_adamw", "ablation:fast_full_pred",
                             "ablation:fast_unsplit", "ablation:fast_torch_linear", "ablation:fast_torch_attention",
                             "ablation:fast_fp32"]
    assert all(c["step"].startswith("bench.train.pretrain.PretrainStep")
               for k, c in by_kind.items() if k.startswith(("pretrain_fast", "ablation:fast")))
    assert by_kind["ablation:fast_default_adamw"]["optimizer"] == "AdamW (default)"
    assert by_kind["ablation:fast_full_pred"]["decoder_predicts"] == 16 and by_kind["pretrain_fast"]["decoder_predicts"] == 12
    assert by_kind["ablation:fast_unsplit"]["step_parts"] == 1
    linears = (2 + 1) * 4 + 2  # (2 encoder + 1 decoder blocks) x qkv, proj, fc1, fc2; decoder embed, prediction
    assert by_kind["pretrain_fast"]["openblas_linears"] == linears and by_kind["ablation:fast_torch_linear"]["openblas_linears"] == 0
    assert by_kind["pretrain_fast"]["openblas_attentions"] > 0 == by_kind["ablation:fast_torch_attention"]["openblas_attentions"]
    assert by_kind["pretrain_fast"]["precision"] == "bf16" and by_kind["ablation:fast_fp32"]["precision"] == "fp32"


def test_harness_spec_expands_to_n_runs_and_the_report_is_written(tmp_path):
    spec = harness_spec(10000)
    assert len(spec["grid"]["masking.ratio"]) * len(spec["grid"]["pretrain.blr"]) * len(spec["seeds"]) == 10000
    load, report = bench_harness(n_runs=24, tmpdir=tmp_path)
    assert load["kind"] == "load_study" and load["n_runs"] == 24
    assert report["kind"] == "write_report" and report["n_runs"] == 24
    assert (tmp_path / "reports" / "harness" / "table.md").exists()


