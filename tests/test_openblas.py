"""Linear layers and attention on numpy's OpenBLAS (bench.train.openblas): the same numbers as torch's
nn.Linear and timm's attention, forward and backward, split over threads or not; taken only on one
CPU thread in fp32."""
import copy

import pytest
import torch
from torch import nn

from bench import masking
from bench.methods.masked_vit import MaskedViT
from bench.targets import create_target
from bench.train import openblas
from bench.train.openblas import OpenBlasLinear, openblas_ready, use_openblas_linear
from bench.train.pretrain import SplitStep



@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grads(model: nn.Module) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bias", [True, False])
def test_openblas_linear_gives_nn_linears_output_and_gradients(one_thread, bias):
    torch.manual_seed(0)
    ref = nn.Linear(48, 40, bias=bias)
    ours = OpenBlasLinear.of(copy.deepcopy(ref))
    x = torch.randn(3, 7, 48).transpose(0, 1)  # not contiguous: the layer copies it into rows
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert OpenBlasLinear.takes(x_ours, ours.weight)
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    assert y_ours.shape == y_ref.shape == (7, 3, 40)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_ours.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)
    if bias:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-6)


def test_a_frozen_openblas_linear_gives_only_the_inputs_gradient(one_thread):
    layer = OpenBlasLinear.of(nn.Linear(8, 4)).requires_grad_(False)
    x = torch.randn(5, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(5, 8), rtol=1e-5, atol=1e-6)


def test_openblas_is_taken_only_on_one_cpu_thread_in_fp32(one_thread):
    w = torch.zeros(4, 8)
    assert OpenBlasLinear.takes(torch.zeros(2, 8), w)
    assert not OpenBlasLinear.takes(torch.zeros(2, 8, dtype=torch.float64), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not OpenBlasLinear.takes(torch.zeros(2, 8), w)
    torch.set_num_threads(2)  # a whole batch on two threads: torch's own multi-threaded product
    assert not OpenBlasLinear.takes(torch.zeros(2, 8), w)


def test_use_openblas_linear_swaps_every_linear_and_keeps_its_parameters():
    torch.manual_seed(0)
    model = MaskedViT(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
                      out_dim=48)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    assert use_openblas_linear(model) == len(linears) > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())  # an optimiser built before still steps them


def test_numpy_here_has_openblas():  # pip's numpy wheels ship it; without it nothing is swapped
    assert openblas_ready()


def test_a_split_pretraining_step_on_openblas_has_torchs_loss_and_gradient(monkeypatch):
    products = []
    product = openblas._product
    monkeypatch.setattr(openblas, "_product", lambda a, b: products.append(a.shape) or product(a, b))
    torch.manual_seed(0)
    model = MaskedViT(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4.0,
                      out_dim=48)
    ours = copy.deepcopy(model)
    linears = use_openblas_linear(ours)
    assert linears == 3 * 4 + 1  # each block's qkv, proj, fc1, fc2; the prediction head
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 16, 16, generator=gen)
    mask = masking.generate("random", 8, (4, 4), 0.5, {}, gen)
    target = create_target("pixel")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two parts, one thread each: both parts' products on OpenBLAS
    try:
        loss = SplitStep(model, 1)(x, mask, target)
        assert not products  # torch's own linear
        step = SplitStep(ours, 2)
        split_loss = step(x, mask, target)
        step.close()
    finally:
        torch.set_num_threads(threads)
    # in both parts, every linear layer: one product forward, two back (its input's and weight's gradients)
    assert len(products) == 2 * 3 * linears
    torch.testing.assert_close(split_loss, loss, rtol=1e-5, atol=1e-6)
    a, b = _grads(model), _grads(ours)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)


def _attention_grads(attn: nn.Module, x: torch.Tensor, g: torch.Tensor, rows: torch.Tensor | None = None):
    x = x.clone().requires_grad_()
    y = attn(x) if rows is None else attn.forward_rows(x, rows)
    y.backward(g)
    return y, x.grad, {n: p.grad.clone() for n, p in attn.named_parameters()}


@pytest.mark.parametrize("kind", ["timm", "bench"])
def test_openblas_attention_gives_timms_output_and_gradients(one_thread, kind):
    from timm.models.vision_transformer import Attention as TimmAttention
    from bench.methods.mae import Attention
    torch.manual_seed(0)
    ref = (TimmAttention if kind == "timm" else Attention)(48, num_heads=3, qkv_bias=True)
    ours = copy.deepcopy(ref)
    assert openblas.use_openblas_linear(ours) == 2  # qkv and proj
    ours = openblas.OpenBlasAttention.of(ours)
    x, g = torch.randn(5, 11, 48), torch.randn(5, 11, 48)
    assert ours.takes(x)
    (y_ref, dx_ref, dp_ref), (y, dx, dp) = _attention_grads(ref, x, g), _attention_grads(ours, x, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)
    for name in dp_ref:
        torch.testing.assert_close(dp[name], dp_ref[name], rtol=1e-5, atol=1e-5, msg=name)


def test_openblas_attention_at_query_rows_gives_bench_attentions(one_thread):
    from bench.methods.mae import Attention
    torch.manual_seed(1)
    ref = Attention(32, num_heads=4, qkv_bias=True)
    ours = openblas.OpenBlasAttention.of(copy.deepcopy(ref))
    ours.qkv = OpenBlasLinear.of(ours.qkv)
    x, rows = torch.randn(3, 9, 32), torch.tensor([[0, 4, 8], [1, 2, 3], [8, 7, 0]])
    g = torch.randn(3, 3, 32)
    (y_ref, dx_ref, dp_ref), (y, dx, dp) = _attention_grads(ref, x, g, rows), _attention_grads(ours, x, g, rows)
    assert y.shape == (3, 3, 32)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)
    for name in dp_ref:
        torch.testing.assert_close(dp[name], dp_ref[name], rtol=1e-5, atol=1e-5, msg=name)


def test_openblas_attention_leaves_other_calls_to_timm(one_thread, monkeypatch):
    from bench.methods.mae import Attention
    ours = openblas.OpenBlasAttention.of(Attention(16, num_heads=2))
    calls = []
    monkeypatch.setattr(openblas._AttentionByNumpy, "apply", lambda *a: calls.append(a) or None)
    x = torch.randn(2, 5, 16)
    torch.set_num_threads(2)  # a whole batch on two threads: torch's fused attention
    assert not ours.takes(x) and ours(x).shape == (2, 5, 16)
    torch.set_num_threads(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x).shape == (2, 5, 16)
    assert not ours.takes(x.double()) and not calls


def test_use_openblas_swaps_every_attention_and_keeps_its_parameters():
    from bench.methods import create_method
    from bench.benchmarks.steps import speed_config
    cfg = speed_config("mae_vit_tiny_patch4", 16, 8, 0.75, "fp32")
    model = create_method("mae").build_model(cfg, 3, create_target("pixel"))
    params, keys = dict(model.named_parameters()), list(model.state_dict())
    counts = openblas.use_openblas(model)
    attentions = [m for m in model.modules() if isinstance(m, openblas.OpenBlasAttention)]
    assert counts["attention"] == len(attentions) == cfg["model"]["depth"] + cfg["model"]["decoder_depth"]
    assert counts["linear"] > 0 and all(isinstance(a.qkv, OpenBlasLinear) for a in attentions)
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
