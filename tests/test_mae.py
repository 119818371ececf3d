"""The MAE model: shapes, visible-only encoding, loss only on masked patches, timm compatibility."""
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from bench import masking
from bench.methods.mae import MaskedAutoencoderViT, sincos_pos_embed
from bench.targets import create_target


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def random_mask(batch, ratio=0.75, seed=0):
    return masking.generate("random", batch, (4, 4), ratio, {}, torch.Generator().manual_seed(seed))


def test_patchify_roundtrip_and_shapes(model):
    x = torch.randn(3, 1, 16, 16)
    patches = model.patchify(x)
    assert patches.shape == (3, 16, 16)
    assert torch.equal(model.unpatchify(patches), x)
    assert torch.equal(patches[0, 1], x[0, 0, 0:4, 4:8].reshape(-1))  # patch 1 = row 0, column 1


def test_encoder_sees_only_visible_patches_plus_cls(model):
    x, mask = torch.randn(5, 1, 16, 16), random_mask(5)
    latent, ids_restore = model.forward_encoder(x, mask)
    assert latent.shape == (5, 1 + 4, 32)
    loss, pred = model(x, mask, create_target("pixel"))
    assert pred.shape == (5, 16, 16) and loss.ndim == 0


def test_loss_ignores_visible_patches(model):
    """Same prediction, targets that differ only on visible patches: the same loss, bit for bit."""
    x, mask = torch.randn(4, 1, 16, 16), random_mask(4)
    target = create_target("norm_pixel")
    _, pred = model(x, mask, target)
    t1 = target(model.patchify(x))
    t2 = t1.clone()
    t2[~mask] += torch.randn_like(t2[~mask]) * 10
    assert torch.equal(target.loss(pred, t1, mask), target.loss(pred, t2, mask))
    t3 = t1.clone()
    t3[mask] += 1.0
    assert not torch.equal(target.loss(pred, t1, mask), target.loss(pred, t3, mask))


def test_gradient_flows_only_from_masked_patch_predictions(model):
    x, mask = torch.randn(2, 1, 16, 16), random_mask(2)
    latent, ids_restore = model.forward_encoder(x, mask)
    pred = model.forward_decoder(latent, ids_restore).detach().requires_grad_(True)
    target = create_target("pixel")
    target.loss(pred, target(model.patchify(x)), mask).backward()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).any()


def test_norm_pixel_target_is_per_patch_standardised():
    patches = torch.randn(2, 5, 12) * 3 + 7
    t = create_target("norm_pixel")(patches)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 5), atol=1e-3)


def test_sincos_position_embedding_is_fixed_and_distinct():
    emb = sincos_pos_embed(32, 4, cls_token=True)
    assert emb.shape == (1, 17, 32)
    assert torch.equal(emb[0, 0], torch.zeros(32))
    assert torch.unique(emb[0, 1:], dim=0).shape[0] == 16


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_encoder_weights_load_into_timm_vit_and_match_features(model, pool):
    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                            num_heads=2, qkv_bias=True, global_pool=pool, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    result = vit.load_state_dict(model.encoder_state_dict(), strict=False)
    assert set(result.missing_keys) <= {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    if pool == "token":
        vit.eval(), model.eval()
        x = torch.randn(2, 1, 16, 16)
        no_mask = torch.zeros(2, 16, dtype=torch.bool)
        latent, _ = model.forward_encoder(x, no_mask)
        assert torch.allclose(vit.forward_features(x), latent, atol=1e-5)


def test_mask_token_in_encoder_feeds_all_patches_and_costs_the_papers_flops():
    torch.manual_seed(0)
    kwargs = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                  decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    with_m = MaskedAutoencoderViT(**kwargs, mask_token_in_encoder=True)
    x, mask = torch.randn(3, 1, 16, 16), random_mask(3)
    latent, ids_restore = with_m.forward_encoder(x, mask)
    assert latent.shape == (3, 1 + 16, 32)  # every patch, masked ones as the token
    loss, pred = with_m(x, mask, create_target("pixel"))
    loss.backward()
    assert pred.shape == (3, 16, 16) and with_m.encoder_mask_token.grad.abs().sum() > 0
    # the masked patches' pixels never reach the encoder: changing them leaves the latent unchanged
    x2 = x.clone()
    x2_patches = with_m.patchify(x2)
    x2_patches[mask] += 5.0
    assert torch.allclose(with_m.forward_encoder(with_m.unpatchify(x2_patches), mask)[0], latent, atol=1e-5)
    assert "encoder_mask_token" not in with_m.encoder_state_dict()
    # ViT-L/16 at 224 px, decoder 512 x 8: the encoder with [M] costs ~3.3x overall (MAE Table 1c)
    from bench.study.config import resolve
    from bench.methods.mae import build_mae
    flops = [build_mae(resolve({"model": {"preset": "mae_vit_large_patch16", "mask_token_in_encoder": m},
                                "data": {"img_size": 224}})["model"], 224, 3).flops_per_image(0.75)["total"]
             for m in (False, True)]
    assert 3.1 < flops[1] / flops[0] < 3.4
