"""Decoder likelihoods p(x | z, c), the diagonal Gaussian over z, and the KL term, in nats.

Every function returns one value per image, shape (B,), summed over pixels and
channels; callers average over the batch. All constants are kept, so
`nll + kl` is a true negative ELBO (Kingma & Welling 2014, eq. 3; Sohn et al.
2015, eq. 4) in nats, comparable with published figures.

The decoder emits raw values `out` of shape (B, C * k, H, W); a `Likelihood`
turns them into parameters: Bernoulli logits (k = 1), a Gaussian mean through
a sigmoid (k = 1, fixed sigma), or a mean and a std through softplus (k = 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cvae.config import ModelConfig

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _per_image(t: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over everything but the batch axis; with `scored` (0/1, broadcastable), over the scored values only."""
    return (t if scored is None else t * scored).flatten(1).sum(1)


def bernoulli_nll(*, logits: torch.Tensor, x: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """-log Bernoulli(x | sigmoid(logits)), summed per image over the scored pixels. x in {0, 1}; a grey x in
    [0, 1] (a completion run with binarize none) gives the cross-entropy -x log p - (1 - x) log(1 - p), which
    no model brings below the grey pixels' own entropy.

    From logits rather than probabilities, so it is exact where the
    reference's BCE on sigmoid outputs clamps log(0) to -100.
    """
    return _per_image(F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none"), scored)


def gaussian_nll(*, mean: torch.Tensor, std: torch.Tensor | float, x: torch.Tensor,
                 scored: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """-log N(x | mean, std^2) = log std + log(2 pi) / 2 + (x - mean)^2 / (2 std^2), per image."""
    if isinstance(std, float):
        log_std = math.log(std)
        return _per_image(HALF_LOG_2PI + log_std + 0.5 * ((x - mean) / std) ** 2, scored)
    return _per_image(HALF_LOG_2PI + std.log() + 0.5 * ((x - mean) / std) ** 2, scored)


class DiagonalGaussian(NamedTuple):
    """N(mu, diag(std^2)) over z: the posterior q(z | x, c) and, when it is a network, the prior p(z | c).

    The standard-normal prior is `None` wherever a prior is passed: its KL and
    log-density have closed forms that need no tensors.
    """

    mu: torch.Tensor  # (..., Z)
    std: torch.Tensor  # (..., Z)

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + std * eps (the reparameterisation), eps ~ N(0, I) drawn here or given."""
        return self.mu + self.std * (torch.randn_like(self.std) if noise is None else noise)

    def double(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.mu.double(), self.std.double())

    def float(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.mu.float(), self.std.float())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z | mu, std^2) summed over the last axis, float64: z (..., B, Z) -> (..., B)."""
        mu, std = self.mu.double(), self.std.double()
        return (-0.5 * ((z.double() - mu) / std).pow(2) - std.log() - HALF_LOG_2PI).sum(-1)

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other) in nats, summed over z: (..., Z) -> (...). `other` None is N(0, I).

        N(0, I): 0.5 * sum(mu^2 + std^2 - log std^2 - 1) (Kingma & Welling 2014, appendix B).
        A Gaussian p: sum(log p.std - log std + (std^2 + (mu - p.mu)^2) / (2 p.std^2) - 1/2)
        (Sohn et al. 2015, eq. 4, with the prior network's p(z | c)).
        """
        return 0.5 * self._twice_kl(other).sum(-1)

    def kl_dims(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other) in nats of each dimension of z: (..., Z) -> (..., Z); they sum to `kl`."""
        return 0.5 * self._twice_kl(other)

    def _twice_kl(self, other: DiagonalGaussian | None) -> torch.Tensor:
        if other is None:
            return self.mu.pow(2) + self.std.pow(2) - 2 * self.std.log() - 1
        var_ratio = (self.std / other.std).pow(2)
        mean_term = ((self.mu - other.mu) / other.std).pow(2)
        return var_ratio + mean_term - 1.0 - var_ratio.log()


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, I) summed over the last axis, float64."""
    return (-0.5 * z.double().pow(2) - HALF_LOG_2PI).sum(-1)


@dataclass(frozen=True)
class Likelihood:
    """Interprets decoder outputs for one of the three decoder types."""

    kind: str  # bernoulli | gaussian
    channels: int
    learn_sigma: bool = False
    fixed_sigma: float = 1.0
    sigma_min: float = 1e-3

    @classmethod
    def from_config(cls, config: ModelConfig) -> Likelihood:
        return cls(config.likelihood, config.channels, config.learn_sigma, config.fixed_sigma, config.sigma_min)

    def std(self, out: torch.Tensor) -> torch.Tensor | float:
        if self.learn_sigma:
            return F.softplus(out[:, self.channels :]) + self.sigma_min
        return self.fixed_sigma

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x | z, y]: pixel probabilities (Bernoulli) or the Gaussian mean, (B, C, H, W)."""
        return torch.sigmoid(out[:, : self.channels])

    def nll(self, out: torch.Tensor, x: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x | z, c) in nats, (B,), over the `scored` pixels (all when None; a condition that shows
        part of the image scores the rest). Computed in float32 whatever the autocast."""
        out = out.float()
        if self.kind == "bernoulli":
            return bernoulli_nll(logits=out, x=x, scored=scored)
        return gaussian_nll(mean=self.mean(out), std=self.std(out), x=x, scored=scored)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x | z, y), clipped to [0, 1] for display in the Gaussian case."""
        out = out.float()
        mean = self.mean(out)
        if self.kind == "bernoulli":
            return torch.bernoulli(mean, generator=generator)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + self.std(out) * noise).clamp(0, 1)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(N)); SE is NaN below 2 values."""
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    se = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return mean, se
