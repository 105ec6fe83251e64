"""The reference conv model's four convolutions, ours (cvae.layers) against torch's own, in one process.

    python -m benchmarks.conv_ab [--threads N] [--rounds 15]

Each layer's forward and backward pass at the training step's shapes (MNIST, batch 64, bf16 autocast,
channels_last, bf16 weights as cvae.runtime.HalfWeights gives them), timed in alternating rounds of 5 passes
so the machine's load falls on both. Reports the median milliseconds and torch / ours (above 1: ours is
faster), and whether cvae.layers uses the matrix product for that layer: the layers with one channel in or out
are timed with it anyway, as the evidence for leaving them to torch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cvae.layers import Conv2d, ConvTranspose2d, _applies, _Convolution

BATCH = 64
LAYERS = [  # name, ours, torch's, in channels, out channels, input height and width
    ("encoder conv 1 -> 64", Conv2d, nn.Conv2d, 1, 64, (28, 38)),
    ("encoder conv 64 -> 128", Conv2d, nn.Conv2d, 64, 128, (14, 19)),
    ("decoder conv-T 128 -> 64", ConvTranspose2d, nn.ConvTranspose2d, 128, 64, (7, 7)),
    ("decoder conv-T 64 -> 1", ConvTranspose2d, nn.ConvTranspose2d, 64, 1, (14, 14)),
]


def step(layer: nn.Module, x: torch.Tensor, ours: bool, transposed: bool) -> None:
    """One forward and backward pass of `layer`; `ours`: with the matrix-product weight gradient, also where
    cvae.layers leaves the layer to torch."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if ours:
            y = _Convolution.apply(x, layer.weight, layer.bias, transposed, layer.stride, layer.padding)
        else:
            y = layer(x)
    y.backward(torch.ones_like(y))
    layer.weight.grad = layer.bias.grad = x.grad = None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default [0]")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, batch {BATCH}, bf16, channels_last; median of {args.rounds} rounds")
    for name, ours_cls, torch_cls, c_in, c_out, hw in LAYERS:
        layers = [cls(c_in, c_out, 4, 2, 1).to(memory_format=torch.channels_last) for cls in (ours_cls, torch_cls)]
        for layer in layers:
            layer.weight.data = layer.weight.data.bfloat16()
        x = torch.randn(BATCH, c_in, *hw).bfloat16().to(memory_format=torch.channels_last)
        x.requires_grad_(c_in != 1)  # as in the model: the image itself needs no gradient

        transposed = ours_cls is ConvTranspose2d
        times: dict[int, list[float]] = {0: [], 1: []}
        for i in (0, 1, 0, 1):
            step(layers[i], x, i == 0, transposed)
        for r in range(args.rounds):
            for i in (0, 1) if r % 2 else (1, 0):
                t0 = time.perf_counter()
                for _ in range(5):
                    step(layers[i], x, i == 0, transposed)
                times[i].append((time.perf_counter() - t0) / 5 * 1000)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            used = _applies(layers[0], x)
        ours, theirs = statistics.median(times[0]), statistics.median(times[1])
        print(f"{name:26s} ours {ours:6.2f} ms   torch {theirs:6.2f} ms   torch / ours {theirs / ours:4.2f}"
              f"   {'matrix-product weight gradient' if used else 'left to torch'}")  # fmt: skip


if __name__ == "__main__":
    main()
