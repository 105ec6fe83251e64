"""Every loss term is a true log-density in nats: checked against torch.distributions."""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from cvae.config import ModelConfig
from cvae.likelihoods import DiagonalGaussian, Likelihood, bernoulli_nll, gaussian_nll

gen = torch.Generator().manual_seed(0)


def test_bernoulli_nll_matches_torch_distributions() -> None:
    logits = torch.randn(5, 1, 4, 4, generator=gen) * 3
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4), generator=gen)
    expected = -Independent(Bernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(bernoulli_nll(logits=logits, x=x), expected)


def test_bernoulli_nll_is_exact_where_probabilities_saturate() -> None:
    # sigmoid(40) rounds to 1 in float32: a BCE on probabilities would clamp; logits stay exact.
    logits = torch.tensor([[[[40.0]]]])
    assert bernoulli_nll(logits=logits, x=torch.zeros(1, 1, 1, 1)).item() == 40.0


def test_gaussian_nll_fixed_and_learned_sigma_match_normal() -> None:
    mean = torch.rand(3, 2, 5, 5, generator=gen)
    x = torch.rand(3, 2, 5, 5, generator=gen)
    std = torch.rand(3, 2, 5, 5, generator=gen) + 0.05
    torch.testing.assert_close(gaussian_nll(mean=mean, std=std, x=x), -Independent(Normal(mean, std), 3).log_prob(x))
    expected_fixed = -Independent(Normal(mean, torch.full_like(mean, 0.3)), 3).log_prob(x)
    torch.testing.assert_close(gaussian_nll(mean=mean, std=0.3, x=x), expected_fixed)


def test_fixed_sigma_one_keeps_the_constant_the_reference_dropped() -> None:
    x = torch.zeros(1, 1, 28, 28)
    nll = gaussian_nll(mean=x, std=1.0, x=x)
    assert math.isclose(nll.item(), 784 * 0.5 * math.log(2 * math.pi), rel_tol=1e-6)


def test_kl_matches_torch_distributions() -> None:
    mu = torch.randn(6, 3, generator=gen)
    std = torch.rand(6, 3, generator=gen) + 0.1
    q = Independent(Normal(mu, std), 1)
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    torch.testing.assert_close(DiagonalGaussian(mu, std).kl(), kl_divergence(q, p))


def _config(**kw) -> ModelConfig:
    return ModelConfig(channels=3, height=4, width=4, num_classes=2, arch="mlp", likelihood="gaussian", **kw)


def test_learned_sigma_likelihood_reads_mean_and_std_channels() -> None:
    lik = Likelihood.from_config(_config(learn_sigma=True, sigma_min=1e-3))
    out = torch.randn(2, 6, 4, 4, generator=gen)
    x = torch.rand(2, 3, 4, 4, generator=gen)
    mean = torch.sigmoid(out[:, :3])
    std = torch.nn.functional.softplus(out[:, 3:]) + 1e-3
    torch.testing.assert_close(lik.nll(out, x), -Independent(Normal(mean, std), 3).log_prob(x))
    sample = lik.sample(out, generator=gen)
    assert sample.shape == x.shape and sample.min() >= 0 and sample.max() <= 1


def test_fixed_sigma_value_is_used() -> None:
    lik = Likelihood.from_config(_config(fixed_sigma=0.1))
    out = torch.zeros(1, 3, 4, 4)
    x = torch.full((1, 3, 4, 4), 0.5)  # equals sigmoid(0): only the constant remains
    assert math.isclose(lik.nll(out, x).item(), 48 * (0.5 * math.log(2 * math.pi) + math.log(0.1)), rel_tol=1e-5)
