"""The model's layers (cvae.layers): a convolution's weight gradient as one matrix product is the convolution's
gradient, and a linear layer's backward pass gives torch's numbers exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvae.layers import Conv2d, ConvTranspose2d, Linear, weight_grad
from cvae.runtime import cpu_has_fast_bf16


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), [(4, 2, 1, (14, 19)), (3, 1, 1, (7, 9)),
                                                                      (4, 2, 0, (10, 10)), (2, 2, 0, (5, 6))])  # fmt: skip
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_the_weight_gradient_is_autograds_in_float64(transposed: bool, kernel: int, stride: int, padding: int,
                                                     size: tuple[int, int], layout: torch.memory_format) -> None:  # fmt: skip
    torch.manual_seed(0)
    layer = (nn.ConvTranspose2d if transposed else nn.Conv2d)(5, 3, kernel, stride, padding).double()
    x = torch.randn(4, 5, *size, dtype=torch.float64).to(memory_format=layout)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    k, s, p = (kernel, kernel), (stride, stride), (padding, padding)
    mine = weight_grad(grad, x, k, s, p) if transposed else weight_grad(x, grad, k, s, p)
    assert mine.shape == layer.weight.shape
    torch.testing.assert_close(mine, layer.weight.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transposed", [False, True])
def test_under_bf16_autocast_the_gradients_are_torchs_to_bf16_precision(
    transposed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cvae.layers.cpu_has_fast_bf16", lambda: True)  # the product's numbers, on any CPU
    torch.manual_seed(0)
    ours = (ConvTranspose2d if transposed else Conv2d)(64, 32, 4, 2, 1).to(memory_format=torch.channels_last)
    theirs = (nn.ConvTranspose2d if transposed else nn.Conv2d)(64, 32, 4, 2, 1).to(memory_format=torch.channels_last)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(16, 64, 7, 9).to(memory_format=torch.channels_last)
    grads = []
    for layer in (ours, theirs):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append((y, xi.grad, layer.weight.grad, layer.bias.grad))
    (y1, gx1, gw1, gb1), (y2, gx2, gw2, gb2) = grads
    assert "_Convolution" in type(y1.grad_fn).__name__  # the matrix product's backward ran
    assert torch.equal(y1, y2) and torch.equal(gx1, gx2)  # the forward pass and input gradient are oneDNN's
    assert gw1.dtype == torch.float32 and gw1.stride() == ours.weight.stride()  # as autocast hands it back
    for mine, torchs in ((gw1, gw2), (gb1, gb2)):
        assert (mine - torchs).abs().max() <= 0.02 * torchs.abs().max()  # bf16 roundings, not a different gradient


@pytest.mark.parametrize(("c_in", "c_out", "bf16"), [(32, 16, False), (1, 64, True), (64, 1, True)])
def test_without_bf16_or_with_one_channel_it_is_torchs_own_convolution(c_in: int, c_out: int, bf16: bool) -> None:
    torch.manual_seed(0)
    ours, theirs = Conv2d(c_in, c_out, 4, 2, 1), nn.Conv2d(c_in, c_out, 4, 2, 1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, c_in, 12, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ours(x), theirs(x))  # no gradient wanted: torch's own
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    for layer, xi in ((ours, xa), (theirs, xb)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            layer(xi).float().sum().backward()
    assert torch.equal(ours.weight.grad, theirs.weight.grad) and torch.equal(xa.grad, xb.grad)


def _linear_grads(layer: nn.Linear, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, ...]:
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(xi)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y, xi.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize(("features", "width"), [(8064, 1024), (1024, 6272), (12, 64), (794, 63)])
@pytest.mark.parametrize("weights", ["fp32 under autocast", "bf16"])
def test_a_linear_layers_gradients_are_torchs_bit_for_bit(features: int, width: int, weights: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The contiguous (out, batch) gradient changes the product's speed, not its numbers: the output and all three
    gradients equal torch's own layer's, under bf16 autocast and with bf16 weights (as HalfWeights runs it); the
    small shapes with the size limit lowered so that they take it too. On a CPU without bf16 matrix
    instructions, where torch's plain loop would round the transposed product differently, it is torch's layer."""
    monkeypatch.setattr("cvae.layers.MIN_LINEAR_WEIGHT", 1)
    torch.manual_seed(0)
    ours, theirs = Linear(features, width), nn.Linear(features, width)
    theirs.load_state_dict(ours.state_dict())
    if weights == "bf16":
        ours, theirs = ours.bfloat16(), theirs.bfloat16()
    x = torch.randn(64, features)
    mine, torchs = _linear_grads(ours, x, True), _linear_grads(theirs, x, True)
    ran = type(mine[0].grad_fn).__name__
    assert ("_Linear" in ran) == cpu_has_fast_bf16(), ran  # our backward ran exactly where it pays
    assert all(torch.equal(a, b) for a, b in zip(mine, torchs, strict=True))


def test_a_linear_layer_in_fp32_without_gradients_or_small_is_torchs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layer = Linear(20, 30)
    x = torch.randn(4, 20)
    y, *grads = _linear_grads(layer, x, True)  # 600 weights: below the size where the copy pays
    assert "Addmm" in type(y.grad_fn).__name__
    monkeypatch.setattr("cvae.layers.MIN_LINEAR_WEIGHT", 1)
    y, *grads = _linear_grads(layer, x, False)
    assert "Addmm" in type(y.grad_fn).__name__ and all(g.dtype == torch.float32 for g in grads)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).grad_fn is None
    monkeypatch.setattr("cvae.layers.cpu_has_fast_bf16", lambda: False)  # a CPU without bf16 matrix instructions
    y, *grads = _linear_grads(layer, x, True)
    assert "Addmm" in type(y.grad_fn).__name__
