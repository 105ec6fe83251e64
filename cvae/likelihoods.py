"""Decoder likelihoods p(x | z, y) and the KL term, as pure functions, in nats.

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

import torch
import torch.nn.functional as F

from cvae.config import ModelConfig

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def bernoulli_nll(*, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log Bernoulli(x | sigmoid(logits)), summed per image. x in {0, 1}.

    From logits rather than probabilities, so it is exact where the
    reference's BCE on sigmoid outputs clamps log(0) to -100.
    """
    return _per_image(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def gaussian_nll(*, mean: torch.Tensor, std: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """-log N(x | mean, std^2) = log std + log(2 pi) / 2 + (x - mean)^2 / (2 std^2), per image."""
    if isinstance(std, float):
        log_std = math.log(std)
        return _per_image(HALF_LOG_2PI + log_std + 0.5 * ((x - mean) / std) ** 2)
    return _per_image(HALF_LOG_2PI + std.log() + 0.5 * ((x - mean) / std) ** 2)


def kl_standard_normal(*, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, std^2) || N(0, I)) = 0.5 * sum(mu^2 + std^2 - log std^2 - 1), per code. (B, Z) -> (B,)."""
    return 0.5 * (mu.pow(2) + std.pow(2) - 2 * std.log() - 1).sum(1)


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

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z, y) in nats, (B,). Computed in float32 whatever the autocast."""
        out = out.float()
        if self.kind == "bernoulli":
            return bernoulli_nll(logits=out, x=x)
        return gaussian_nll(mean=self.mean(out), std=self.std(out), x=x)

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
