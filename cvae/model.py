"""The conditional VAE: a Gaussian encoder q(z | x, y) and a decoder p(x | z, y).

Two architectures, both built from a `ModelConfig` alone:

- conv: the reference's layers (REFERENCE.md). The label conditions the
  encoder the reference's way: the one-hot vector is appended to every image
  row as `num_classes` extra columns, (B, C, H, W) -> (B, C, H, W + K), so the
  layer sizes and parameter count match it (15.0 M for MNIST at z = 2). The
  decoder gets [z, one-hot].
- mlp: a small fully connected network for fast class demos; it gets
  [flattened x, one-hot] and [z, one-hot].

With `condition="none"` the one-hot code has width 0 (`ModelConfig.label_width`):
the same layers without the label's inputs, a plain VAE, and the label passed
in is ignored. (`condition="quadrants"` is another model: cvae.completion.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cvae.config import ModelConfig
from cvae.likelihoods import Likelihood, kl_standard_normal

ENCODER_STD_FLOOR = 1e-6  # std = softplus(.) + floor, as the reference


class Posterior(NamedTuple):
    mu: torch.Tensor  # (B, Z)
    std: torch.Tensor  # (B, Z)


class CVAEOutput(NamedTuple):
    out: torch.Tensor  # raw decoder output (B, C * k, H, W); see Likelihood
    mu: torch.Tensor  # (B, Z)
    std: torch.Tensor  # (B, Z)
    z: torch.Tensor  # (B, Z), one sample from q(z | x, y)


class ElboTerms(NamedTuple):
    """Per-image terms in nats; `loss` is their batch mean, the negative ELBO."""

    recon: torch.Tensor  # -log p(x | z, y), (B,)
    kl: torch.Tensor  # KL(q(z | x, y) || p(z)), (B,)

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl

    @property
    def loss(self) -> torch.Tensor:
        return self.nelbo.mean()


def _conv_out(n: int) -> int:
    return (n + 2 * 1 - 4) // 2 + 1  # 4x4 kernel, stride 2, padding 1


class ConvEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, h, w = config.channels, config.height, config.width + config.label_width
        for i, c_out in enumerate(config.enc_channels):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
            c_in, h, w = c_out, _conv_out(h), _conv_out(w)
        layers.append(nn.Flatten())
        features = c_in * h * w
        for width in config.enc_hidden:
            layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.LeakyReLU(0.2)]
            features = width
        layers.append(nn.Linear(features, 2 * config.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c, h, _ = x.shape
        rows = y[:, None, None, :].expand(b, c, h, y.shape[1])  # (B, C, H, K): one-hot on every row
        return self.net(torch.cat([x, rows.to(x.dtype)], dim=3))  # (B, 2Z)


class ConvDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        ups = len(config.dec_channels) + 1
        self.start = (config.dec_start_channels, config.height >> ups, config.width >> ups)
        layers: list[nn.Module] = []
        features = config.latent_dim + config.label_width
        for width in config.dec_hidden:
            layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU()]
            features = width
        n_start = self.start[0] * self.start[1] * self.start[2]
        layers += [nn.Linear(features, n_start), nn.BatchNorm1d(n_start), nn.ReLU(), nn.Unflatten(1, self.start)]
        c_in = config.dec_start_channels
        for i, c_out in enumerate(config.dec_channels):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1))
            if i == 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
            c_in = c_out
        layers.append(nn.ConvTranspose2d(c_in, config.out_channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, zy: torch.Tensor) -> torch.Tensor:
        return self.net(zy)  # (B, C * k, H, W)


MLP_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh,
}  # fmt: skip


def _mlp_block(config: ModelConfig, features: int, width: int) -> list[nn.Module]:
    """Linear, then the configured normalisation (if any), then the activation."""
    norm: list[nn.Module] = {"none": [], "batch": [nn.BatchNorm1d(width)], "layer": [nn.LayerNorm(width)]}[
        config.mlp_norm
    ]
    return [nn.Linear(features, width), *norm, MLP_ACTIVATIONS[config.mlp_activation]()]


class MLPEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        features = config.channels * config.height * config.width + config.label_width
        layers: list[nn.Module] = []
        for width in config.mlp_hidden:
            layers += _mlp_block(config, features, width)
            features = width
        layers.append(nn.Linear(features, 2 * config.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), y.to(x.dtype)], dim=1))


class MLPDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        features = config.latent_dim + config.label_width
        layers: list[nn.Module] = []
        for width in reversed(config.mlp_hidden):
            layers += _mlp_block(config, features, width)
            features = width
        shape = (config.out_channels, config.height, config.width)
        layers += [nn.Linear(features, shape[0] * shape[1] * shape[2]), nn.Unflatten(1, shape)]
        self.net = nn.Sequential(*layers)

    def forward(self, zy: torch.Tensor) -> torch.Tensor:
        return self.net(zy)


class CVAE(nn.Module):
    """q(z | x, y) = N(mu, std^2); p(z) = N(0, I); p(x | z, y) from `Likelihood`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.likelihood = Likelihood.from_config(config)
        if config.arch == "conv":
            self.encoder: nn.Module = ConvEncoder(config)
            self.decoder: nn.Module = ConvDecoder(config)
        else:
            self.encoder = MLPEncoder(config)
            self.decoder = MLPDecoder(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal weights and zero biases, as the reference."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K) one-hot codes of the labels; (B, 0) for condition none, so the networks never see the class."""
        return F.one_hot(labels, self.config.num_classes).float()[:, : self.config.label_width]

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> Posterior:
        h = self.encoder(x, self.one_hot(labels)).float()  # (B, 2Z)
        mu, raw = h.chunk(2, dim=1)
        return Posterior(mu, F.softplus(raw) + ENCODER_STD_FLOOR)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, self.one_hot(labels).to(z.dtype)], dim=1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> CVAEOutput:
        mu, std = self.encode(x, labels)
        z = mu + std * torch.randn_like(std)  # reparameterisation
        return CVAEOutput(self.decode(z, labels), mu, std, z)

    def elbo_terms(self, x: torch.Tensor, labels: torch.Tensor) -> ElboTerms:
        """One-sample estimate of the negative ELBO's two terms, per image, in nats."""
        out = self(x, labels)
        return ElboTerms(self.likelihood.nll(out.out, x), kl_standard_normal(mu=out.mu, std=out.std))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean images E[x | z, y], (B, C, H, W) in [0, 1]."""
        return self.likelihood.mean(self.decode(z, labels).float())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
