"""The model's convolutions and linear layers: torch's modules, with a faster weight gradient on a CPU in bf16.

Convolutions. In the reference conv model's CPU step (bf16, channels_last, batch 64) oneDNN spends most of each
convolution's backward pass on the weight gradient: its kernels for these small images (7x9 to 14x19
positions) run a 4x4, stride 2 convolution's weight gradient at a fraction of the matrix units' speed. The
same gradient is one matrix product: the output's gradient as rows (batch x positions, out channels) against
the input's 4x4 patches as rows (batch x positions, taps x in channels), gathered once from the padded
channels_last input. A transposed convolution's weight gradient is the same product with the two roles
swapped (its input plays the output). The forward pass and the input's gradient stay oneDNN's.

Linear layers. Autograd takes a linear layer's weight gradient as grad_out.t() @ input, and oneDNN's bf16
product runs that transposed left operand at about half the speed of a contiguous one: on the reference
model's two large layers (8064 x 1024 and 1024 x 6272, batch 64) this was the largest part of the backward
pass. `Linear` copies the small (batch, out) gradient to (out, batch) first, on weights of 2 M elements or
more (on smaller ones the copy costs more than it gains); the product is the same, number for number
(tests/test_layers.py), and so are the input's and the bias's gradients.

`Conv2d`, `ConvTranspose2d` and `Linear` are torch's modules with that backward where it pays: a CPU with bf16
matrix instructions, bf16 (autocast or bf16 weights), and for a convolution a plain 2-D one with 16 channels
or more in and out.
Everywhere else, and whenever no gradient is wanted, they are torch's own. Parameters and checkpoints are
torch's.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Conv2d", "ConvTranspose2d", "Linear", "cpu_has_fast_bf16", "weight_grad"]


def weight_grad(inp: torch.Tensor, grad_out: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """The gradient of conv2d(inp, W, stride, padding)'s weight W (out, in, kh, kw) given its output's gradient,
    in channels_last layout (the layout of a channels_last model's weight)."""
    b, c = inp.shape[:2]
    o, ho, wo = grad_out.shape[1:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = F.pad(inp, (pw, pw, ph, ph)).contiguous(memory_format=torch.channels_last)
    hp, wp = x.shape[2:]
    # Every output position's patch as a row of (kh, kw, c) values: a strided view, copied once by reshape.
    patches = x.as_strided((b, ho, wo, kh, kw, c), (hp * wp * c, sh * wp * c, sw * c, wp * c, c, 1),
                           x.storage_offset())  # fmt: skip
    cols = patches.reshape(b * ho * wo, kh * kw * c)
    rows = grad_out.permute(0, 2, 3, 1).reshape(b * ho * wo, o)
    return (rows.t() @ cols).view(o, kh, kw, c).permute(0, 3, 1, 2)


class _Convolution(torch.autograd.Function):
    """oneDNN's forward pass and input gradient; the weight gradient from `weight_grad`."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)  # what autocast does for a convolution
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool,
                stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.transposed, ctx.stride, ctx.padding, ctx.has_bias = transposed, stride, padding, bias is not None
        op = F.conv_transpose2d if transposed else F.conv2d
        return op(x, weight, bias, stride, padding)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        kernel = tuple(weight.shape[2:])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(grad, x, weight, None, list(ctx.stride), list(ctx.padding),
                                                     [1, 1], ctx.transposed, [0, 0], 1, [True, False, False])[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            # A transposed convolution is the adjoint of a convolution with the same weight, from its output
            # (here `grad`) to its input (`x`): the weight gradient is that convolution's, roles swapped.
            gw = weight_grad(grad, x, kernel, ctx.stride, ctx.padding) if ctx.transposed else \
                weight_grad(x, grad, kernel, ctx.stride, ctx.padding)  # fmt: skip
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


@functools.cache  # asked on every forward pass of these layers; the CPU does not change
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX). Here, beside the layers that
    need it on every forward pass, so that this module imports nothing of the package's;
    `cvae.runtime.select_amp_dtype` picks bf16 by it too."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _bf16_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Training in bf16 (autocast, or bf16 weights) on a CPU with bf16 matrix instructions: where the backward
    passes here pay. A CPU without them multiplies bf16 matrices with torch's plain loop, as slowly whichever
    operand is transposed, and rounds a transposed product differently from a contiguous one: the linear
    layer's gradient would no longer be torch's own, number for number."""
    return (
        x.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad
        and (weight.dtype == torch.bfloat16
             or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        and cpu_has_fast_bf16()
    )  # fmt: skip


MIN_CHANNELS = 16  # on both sides: fewer (a grey image's 1 channel) make patches too narrow to fill the units


def _applies(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> bool:
    """Whether the matrix-product weight gradient is this step's: a plain 2-D convolution on a CPU, training
    in bf16 (autocast, or bf16 weights), with channels enough on both sides. With one channel in or out the
    product is as slow as oneDNN's kernel or slower (`python -m benchmarks.conv_ab`)."""
    return (
        x.dim() == 4 and _bf16_on_cpu(x, module.weight) and min(module.in_channels, module.out_channels) >= MIN_CHANNELS
        and module.groups == 1 and module.dilation == (1, 1) and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple) and not any(getattr(module, "output_padding", (0, 0)))
    )  # fmt: skip


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _applies(self, x):
            return super().forward(x)
        return _Convolution.apply(x, self.weight, self.bias, False, self.stride, self.padding)


class ConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not _applies(self, x):
            return super().forward(x, output_size)
        return _Convolution.apply(x, self.weight, self.bias, True, self.stride, self.padding)


class _Linear(torch.autograd.Function):
    """F.linear, with its weight gradient from the output's gradient made contiguous (out, batch) first."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)  # what autocast does for a linear layer
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors  # (batch, in), (out, in); grad: (batch, out)
        gx = grad @ weight if ctx.needs_input_grad[0] else None
        gw = grad.t().contiguous() @ x if ctx.needs_input_grad[1] else None  # (out, batch) @ (batch, in)
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


# Weights this large or larger take the contiguous gradient's product: on smaller ones (an MLP's 512 x 794 at
# batch 128, a latent layer) the copy and the custom function cost more than the product gains.
MIN_LINEAR_WEIGHT = 1 << 21


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or self.weight.numel() < MIN_LINEAR_WEIGHT or not _bf16_on_cpu(x, self.weight):
            return super().forward(x)
        return _Linear.apply(x, self.weight, self.bias)
