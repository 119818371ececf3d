"""A batch split over CPU threads (bench.train.parts): the parts' gradients and features are the
whole batch's, stochastic depth included (each sample's draw is cut with its rows)."""
import copy

import pytest
import torch
from timm.layers import DropPath

from bench.methods.vit import ViTEncoder
from bench.train.parts import PartPool, RowDropPath, batch_backward, row_draws, step_draws, use_row_drop_path


def _vit(drop_path: float) -> ViTEncoder:
    torch.manual_seed(0)
    vit = ViTEncoder(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=3, num_heads=2,
                     drop_path_rate=drop_path, global_pool="avg")
    vit.train()
    return vit


def test_use_row_drop_path_replaces_every_drop_path_that_drops():
    vit = _vit(0.2)
    layers = use_row_drop_path(vit)
    assert layers == 2 * 2  # blocks 1 and 2 (block 0's rate is 0), two residual branches each
    assert not any(isinstance(m, DropPath) and m.drop_prob > 0 for m in vit.modules())
    assert sorted(m.index for m in vit.modules() if isinstance(m, RowDropPath)) == [0, 1, 2, 3]


def test_row_drop_path_keeps_the_samples_whose_draw_is_below_keep_and_scales_them():
    layer = RowDropPath(0.25, index=1)
    x = torch.ones(4, 3, 2)
    draws = torch.tensor([[0.9, 0.1], [0.0, 0.8], [0.5, 0.74], [0.2, 0.75]])
    with row_draws(draws):
        out = layer(x)
    assert out[:, 0, 0].tolist() == pytest.approx([1 / 0.75, 0.0, 1 / 0.75, 0.0])
    layer.eval()
    with row_draws(draws):
        assert torch.equal(layer(x), x)  # eval mode: no stochastic depth
    layer.train()
    with row_draws(draws[:3]), pytest.raises(ValueError, match="3 rows for a batch of 4"):
        layer(x)


def test_row_drop_path_without_draws_is_timms():
    x = torch.randn(64, 5, 8)
    torch.manual_seed(3)
    ours = RowDropPath(0.3, 0)(x)
    torch.manual_seed(3)
    theirs = DropPath(0.3)(x)
    assert torch.equal(ours, theirs)


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("parts, accum", [(2, 1), (1, 3), (2, 2)])
def test_a_split_fine_tune_step_with_drop_path_has_the_batchs_gradient(parts, accum):
    whole, split = _vit(0.3), _vit(0.3)
    layers = use_row_drop_path(whole)
    assert use_row_drop_path(split) == layers
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, 16, 16, generator=gen), torch.randint(0, 5, (10,), generator=gen)
    draws = step_draws(layers, 10, gen, "cpu")
    assert draws.shape == (10, layers) and (draws < 0.3).any()  # some samples are dropped somewhere
    criterion = torch.nn.CrossEntropyLoss()

    def backward(model, pool, acc):
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_of(lo, hi):
            with row_draws(draws[lo:hi]):
                loss = criterion(model(x[lo:hi]), y[lo:hi])
            return loss if hi - lo == 10 else loss * ((hi - lo) / 10)

        return batch_backward(pool, model, 10, acc, loss_of, params)

    one = PartPool(1)
    expected = backward(whole, one, 1)
    pool = PartPool(parts)
    got = backward(split, pool, accum)
    pool.close()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    a, b = _grads(whole), _grads(split)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


def test_pool_map_gives_the_whole_batchs_features_in_order_and_keeps_no_grad():
    vit = _vit(0.0).eval()
    x = torch.randn(9, 3, 16, 16)
    pool = PartPool(3)
    with torch.no_grad():
        expected = vit.features(x)
        got = pool.map(lambda lo, hi: vit.features(x[lo:hi]), len(x))
    pool.close()
    assert got.shape == (9, 32) and not got.requires_grad
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert PartPool(4).edges(0, 3) == [0, 1, 2, 3]  # never more parts than rows
    assert PartPool(2).edges(4, 9) == [4, 6, 9]


def test_pretraining_with_drop_path_gives_the_same_gradient_split_or_not():
    from bench import masking
    from bench.methods.masked_vit import MaskedViT
    from bench.targets import create_target
    from bench.train.pretrain import SplitStep

    torch.manual_seed(0)
    model = MaskedViT(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4.0, out_dim=48,
                      drop_path=0.3)
    layers = use_row_drop_path(model)
    split = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 16, 16, generator=gen)
    mask = masking.generate("random", 8, (4, 4), 0.5, {}, gen)
    draws = step_draws(layers, 8, gen, "cpu")
    target = create_target("pixel")
    loss = SplitStep(model, 1)(x, mask, target, draws=draws)
    step = SplitStep(split, 2)
    split_loss = step(x, mask, target, draws=draws)
    step.close()
    assert torch.allclose(split_loss, loss, rtol=1e-5, atol=1e-6)
    a, b = _grads(model), _grads(split)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


def test_a_thread_scoped_value_is_per_thread_and_restored():
    import threading
    from bench.core.scoped import ThreadScoped
    scope, seen = ThreadScoped(), {}
    barrier = threading.Barrier(2)

    def worker(name):
        with scope.using(name):
            barrier.wait()  # both threads inside their blocks at once
            seen[name] = scope.get()
        seen[name + " after"] = scope.get()

    with scope.using("outer"):
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
        [t.start() for t in threads]
        [t.join() for t in threads]
        with scope.using("inner"):
            assert scope.get() == "inner"
        assert scope.get() == "outer"
    assert scope.get() is None
    assert seen == {"a": "a", "b": "b", "a after": None, "b after": None}
