"""Complete a digit from some of its quadrants: the CVAE paper's own MNIST experiment.

Sohn, Lee & Yan, "Learning Structured Output Representation using Deep
Conditional Generative Models", NIPS 2015, section 5.1: each 28x28 digit is
cut into four 14x14 quadrants; the model sees k = 1, 2 or 3 of them (x) and
predicts the rest (y). One x has many plausible y (the top of a 3 or of an 8),
so a deterministic network predicts a blurred average while a CVAE draws
distinct, sharp completions.

Conventions (the same as Pyro's CVAE tutorial, whose figures we compare with):

- Quadrants are given in the order bottom-left, top-left, top-right
  (`QUADRANT_ORDER`): k = 1 gives the bottom-left quadrant, k = 2 the left
  half, k = 3 everything but the bottom-right quadrant.
- Images are statically binarized (pixel >= 0.5 -> 1), as the reference does.
- The network input x is the image with every unobserved pixel set to 0,
  flattened, plus (with `mask_channel`) the 0/1 mask of observed pixels, which
  a model trained on a random k per image (`quadrants=0`) needs to know which
  zeros are hidden. The output y is the whole image; only the unobserved
  pixels count in every loss and metric, so given pixels never score.

Three networks (all MLPs, ReLU), as in the paper:

- recognition q(z | x, y): the full image (+ mask) -> Gaussian over z;
- conditional prior p(z | x): x (+ mask) -> Gaussian over z (not N(0, I));
- generation p(y | x, z): [x (+ mask), z] -> Bernoulli logits per pixel;

and the paper's deterministic baseline: the generation network without z,
trained by cross-entropy on y. Both are trained together, on the same batches.

The metric is the negative conditional log-likelihood -log p(y | x) of the
unobserved pixels in nats per image, estimated by importance sampling with
q(z | x, y) as the proposal, and by plain Monte Carlo from p(z | x); the
baseline's is exact (its cross-entropy). Both estimators are upper bounds on
-log p(y | x) in expectation (Jensen) that tighten as the samples grow.

    python -m cvae.completion --quadrants 1 --epochs 5 --threads 2
    python -m cvae.completion --evaluate checkpoints/<run> --eval-samples 100
    python -m cvae.completion --evaluate checkpoints/<run> --eval-samples 0 --figure digit.png --figure-index 7
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cvae.checkpoints import load_checkpoint, save_checkpoint
from cvae.cli import OneLineParser, number
from cvae.config import DEFAULTS
from cvae.errors import CheckpointError, ConfigError, CVAEError
from cvae.likelihoods import mean_se
from cvae.runs import (
    RunDir,
    clean_json,
    default_runs_root,
    fresh_run_path,
    process_identity,
    read_json,
    run_path,
    write_atomic,
    write_json,
)

KIND = "quadrant-completion"  # config.json's and the checkpoint's "kind": what built this run
QUADRANT_ORDER = ("bottom-left", "top-left", "top-right", "bottom-right")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
STD_FLOOR = 1e-4  # std = softplus(.) + floor: keeps log std finite for the KL and the weights
EVAL_SEED = 1234


# ------------------------------------------------------------------ configs


@dataclass(frozen=True, kw_only=True)
class CompletionConfig:
    """The models: shapes, widths and the objective."""

    quadrants: int = 1  # quadrants given, 1-3 (QUADRANT_ORDER); 0 = a random k in 1-3 per training image
    height: int = 28
    width: int = 28
    latent_dim: int = 32
    hidden: tuple[int, ...] = (500, 500)  # every network's hidden widths (Pyro's tutorial: 500, 500)
    mask_channel: bool = False  # also feed the mask of observed pixels (needed when quadrants=0)
    alpha: float = 1.0  # hybrid objective: alpha * (-ELBO) + (1 - alpha) * GSNN loss; 1 = the CVAE alone

    def validate(self) -> CompletionConfig:
        if isinstance(self.quadrants, bool) or self.quadrants not in (0, 1, 2, 3):
            raise ConfigError(f"quadrants must be 1, 2 or 3 (or 0 for a random count), got {self.quadrants!r}")
        for name in ("height", "width", "latent_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.height % 2 or self.width % 2:
            raise ConfigError(f"the image must split into four equal quadrants, got {self.height}x{self.width}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden must be one or more positive widths, got {self.hidden!r}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be between 0 and 1, got {self.alpha!r}")
        if self.quadrants == 0 and not self.mask_channel:
            raise ConfigError("a model trained on a random quadrant count (quadrants=0) needs the mask channel")
        return self

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def input_size(self) -> int:
        return self.pixels * (2 if self.mask_channel else 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, raw: Any) -> CompletionConfig:
        if not isinstance(raw, dict):
            raise ConfigError("the completion model's config is not an object")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in raw.items() if k in known}
        if "hidden" in values:
            values["hidden"] = tuple(values["hidden"])
        try:
            return cls(**values).validate()
        except TypeError as err:
            raise ConfigError(f"bad completion config: {err}") from None


@dataclass(frozen=True, kw_only=True)
class CompletionTrainConfig:
    """The optimisation and the data it sees."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    threads: int = 0  # CPU threads; 0 = torch's default
    data_dir: str = ""  # "" = the project's data/ (or $CVAE_DATA_DIR)
    train_subset: int | None = None
    test_subset: int | None = None
    eval_samples: int = 100  # S for the final -log p(y | x) estimates; 0 skips them

    def validate(self) -> CompletionTrainConfig:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("seed", "threads", "eval_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value!r}")
        lr = self.learning_rate
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"learning_rate must be a positive number, got {lr!r}")
        return self

    @classmethod
    def from_dict(cls, raw: Any) -> CompletionTrainConfig:
        if not isinstance(raw, dict):
            raise ConfigError("the completion training config is not an object")
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known}).validate()
        except TypeError as err:
            raise ConfigError(f"bad completion training config: {err}") from None


# ------------------------------------------------------------------ masking


def quadrant_mask(quadrants: int, *, height: int = 28, width: int = 28) -> torch.Tensor:
    """(H, W) float mask: 1 where the pixel is given, for the first `quadrants` of QUADRANT_ORDER."""
    if isinstance(quadrants, bool) or quadrants not in (1, 2, 3):
        raise ConfigError(f"the number of given quadrants must be 1, 2 or 3, got {quadrants!r}")
    h, w = height // 2, width // 2
    mask = torch.zeros(height, width)
    slices = {
        "bottom-left": (slice(h, None), slice(None, w)),
        "top-left": (slice(None, h), slice(None, w)),
        "top-right": (slice(None, h), slice(w, None)),
    }
    for name in QUADRANT_ORDER[:quadrants]:
        mask[slices[name]] = 1.0
    return mask


def masks_for(counts: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
    """(B, H*W) masks for a (B,) tensor of quadrant counts in 1-3."""
    table = torch.stack([quadrant_mask(k, height=height, width=width).flatten() for k in (1, 2, 3)])  # (3, HW)
    return table.to(counts.device)[counts.long() - 1]


def network_input(images: torch.Tensor, mask: torch.Tensor, *, mask_channel: bool) -> torch.Tensor:
    """x: (B, H*W) or (B, 2*H*W) = [image * mask (hidden pixels 0), mask if mask_channel].

    `images` (B, 1, H, W) or (B, H*W); `mask` (B, H*W) or (H*W,), 1 = given.
    """
    flat = images.reshape(len(images), -1)
    mask = mask.expand_as(flat)
    return torch.cat([flat * mask, mask], 1) if mask_channel else flat * mask


# ------------------------------------------------------------------ networks


class Gaussian(NamedTuple):
    """A diagonal Gaussian over z."""

    mu: torch.Tensor  # (..., Z)
    std: torch.Tensor  # (..., Z)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class GaussianNet(nn.Module):
    """inputs -> MLP -> N(mu, std^2), std = softplus + floor. The recognition and the prior network."""

    def __init__(self, inputs: int, hidden: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.body = _mlp([inputs, *hidden])
        self.head = nn.Linear(hidden[-1], 2 * latent_dim)

    def forward(self, inputs: torch.Tensor) -> Gaussian:
        mu, raw = self.head(self.body(inputs)).chunk(2, dim=-1)
        return Gaussian(mu, F.softplus(raw) + STD_FLOOR)


class GenerationNet(nn.Module):
    """p(y | x, z): Bernoulli logits for every pixel, (..., H*W).

    The first layer is a linear map of [x, z] written as two maps, so that x's
    part is computed once per image and shared by all its z samples.
    """

    def __init__(self, inputs: int, latent_dim: int, hidden: Sequence[int], pixels: int) -> None:
        super().__init__()
        self.from_x = nn.Linear(inputs, hidden[0])
        self.from_z = nn.Linear(latent_dim, hidden[0], bias=False) if latent_dim else None
        self.body = _mlp(hidden)
        self.out = nn.Linear(hidden[-1], pixels)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, D); z None, (B, Z) or (S, B, Z) -> logits (B, HW) or (S, B, HW)."""
        h = self.from_x(x)  # (B, H0)
        if z is not None and self.from_z is not None:
            h = h + self.from_z(z)  # broadcasts over a leading sample axis
        return self.out(self.body(F.relu(h)))


class CompletionOutput(NamedTuple):
    logits: torch.Tensor  # (B, HW), from z ~ q(z | x, y)
    posterior: Gaussian  # q(z | x, y)
    prior: Gaussian  # p(z | x)
    z: torch.Tensor  # (B, Z)


class CompletionCVAE(nn.Module):
    """Recognition, conditional prior and generation networks (Sohn et al. 2015, figure 1(d))."""

    def __init__(self, config: CompletionConfig) -> None:
        super().__init__()
        self.config = config.validate()
        c = config
        self.recognition = GaussianNet(c.input_size + c.pixels, c.hidden, c.latent_dim)
        self.prior = GaussianNet(c.input_size, c.hidden, c.latent_dim)
        self.generation = GenerationNet(c.input_size, c.latent_dim, c.hidden, c.pixels)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> Gaussian:
        """q(z | x, y): x (B, D) and y (B, HW), the hidden pixels with the given ones at 0 (target * hidden)."""
        return self.recognition(torch.cat([x, y], 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> CompletionOutput:
        """x (B, D), y = target * hidden (B, HW)."""
        q = self.posterior(x, y)
        z = q.mu + q.std * torch.randn_like(q.std)
        return CompletionOutput(self.generation(x, z), q, self.prior(x), z)


class BaselineNet(nn.Module):
    """The paper's deterministic baseline: the generation network without z."""

    def __init__(self, config: CompletionConfig) -> None:
        super().__init__()
        self.net = GenerationNet(config.input_size, 0, config.hidden, config.pixels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, HW) logits


class CompletionModels(nn.Module):
    """The CVAE and its baseline, trained side by side; one state dict for the checkpoint."""

    def __init__(self, config: CompletionConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.cvae = CompletionCVAE(config)
        self.baseline = BaselineNet(config)

    def inputs(self, images: torch.Tensor, quadrants: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, hidden): network input and the (B, HW) 0/1 mask of pixels to predict and score."""
        c = self.config
        counts = quadrants if isinstance(quadrants, torch.Tensor) else torch.full((len(images),), quadrants)
        self.check_quadrants(counts)
        mask = masks_for(counts.to(images.device), height=c.height, width=c.width)
        return network_input(images, mask, mask_channel=c.mask_channel), 1.0 - mask

    def check_quadrants(self, counts: torch.Tensor) -> None:
        fixed = self.config.quadrants
        if counts.numel() and fixed and bool((counts != fixed).any()):
            raise ConfigError(f"this model was trained with {fixed} given quadrant(s) only")


# ------------------------------------------------------------------ losses


def masked_bernoulli_nll(*, logits: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """-log p(y | ...) of the hidden pixels only, nats, summed per image: (..., HW) -> (...).

    `target` holds 0/1 pixels; `hidden` is 1 where the pixel is predicted, 0
    where it was given (given pixels contribute exactly nothing).
    """
    return (F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none") * hidden).sum(-1)


def kl_diag_gaussians(*, q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) for diagonal Gaussians, nats, summed over z: (B, Z) -> (B,).

    = sum(log p.std - log q.std + (q.std^2 + (q.mu - p.mu)^2) / (2 p.std^2) - 1/2)
    (Sohn et al. 2015, eq. 4, with the prior network's p(z | x) in place of N(0, I)).
    """
    var_ratio = (q.std / p.std).pow(2)
    mean_term = ((q.mu - p.mu) / p.std).pow(2)
    return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


class CompletionLoss(NamedTuple):
    """Per-image terms in nats, (B,); `loss` is the batch mean of the training objective."""

    recon: torch.Tensor  # -log p(y | x, z), z ~ q(z | x, y)
    kl: torch.Tensor  # KL(q(z | x, y) || p(z | x))
    gsnn: torch.Tensor | None  # -log p(y | x, z), z ~ p(z | x); None when alpha = 1
    baseline: torch.Tensor  # the baseline's -log p(y | x)
    alpha: float

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl

    @property
    def loss(self) -> torch.Tensor:
        """Mean over the batch of alpha * (-ELBO) + (1 - alpha) * GSNN + the baseline's loss.

        The baseline shares no parameter with the CVAE, so adding its loss
        trains both with one backward pass and changes neither's gradients.
        """
        cvae = self.nelbo if self.gsnn is None else self.alpha * self.nelbo + (1 - self.alpha) * self.gsnn
        return (cvae + self.baseline).mean()


def completion_loss(
    models: CompletionModels, *, x: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor
) -> CompletionLoss:
    """The paper's objectives on one batch: x (B, D), target (B, HW) in {0, 1}, hidden (B, HW)."""
    out = models.cvae(x, target * hidden)  # the recognition network sees the hidden pixels only
    recon = masked_bernoulli_nll(logits=out.logits, target=target, hidden=hidden)
    kl = kl_diag_gaussians(q=out.posterior, p=out.prior)
    gsnn = None
    alpha = float(models.config.alpha)
    if alpha < 1.0:
        # GSNN term (Sohn et al. 2015, eq. 7 with one sample): z from the prior network, reparameterized.
        z = out.prior.mu + out.prior.std * torch.randn_like(out.prior.std)
        gsnn = masked_bernoulli_nll(logits=models.cvae.generation(x, z), target=target, hidden=hidden)
    base = masked_bernoulli_nll(logits=models.baseline(x), target=target, hidden=hidden)
    return CompletionLoss(recon, kl, gsnn, base, alpha)


# ------------------------------------------------------------------ the metric


def gaussian_log_prob(z: torch.Tensor, g: Gaussian) -> torch.Tensor:
    """log N(z | mu, std^2) summed over the last axis, float64. z (S, B, Z) -> (S, B)."""
    mu, std = g.mu.double(), g.std.double()
    return (-0.5 * ((z.double() - mu) / std).pow(2) - std.log() - HALF_LOG_2PI).sum(-1)


def log_likelihood_estimate(
    *,
    log_likelihood: Callable[[torch.Tensor], torch.Tensor],
    prior: Gaussian,
    proposal: Gaussian | None,
    samples: int,
    chunk: int = 50,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """log p(y | x) ~= log (1/S) sum_s p(y | x, z_s) p(z_s | x) / r(z_s), z_s ~ r, per image, float64 (B,).

    r is `proposal` (importance sampling; the paper uses q(z | x, y)) or, when
    None, the prior itself (plain Monte Carlo: the weights are 1). Either way
    the estimate is unbiased for p(y | x) and, by Jensen, a lower bound on
    log p(y | x) in expectation. `log_likelihood(z)` maps (S', B, Z) to the
    (S', B) values of log p(y | x, z); samples go through in chunks of `chunk`
    and are merged by a running logsumexp.
    """
    if samples < 1:
        raise CVAEError(f"the number of samples must be at least 1, got {samples}")
    source = proposal if proposal is not None else prior
    b, zdim = source.mu.shape
    acc = torch.full((b,), -math.inf, dtype=torch.float64, device=source.mu.device)
    for s0 in range(0, samples, chunk):
        sc = min(chunk, samples - s0)
        eps = torch.randn(sc, b, zdim, generator=generator).to(source.mu.device, source.mu.dtype)  # (sc, B, Z)
        z = source.mu + source.std * eps
        log_w = log_likelihood(z).double()  # (sc, B)
        if proposal is not None:
            log_w = log_w + gaussian_log_prob(z, prior) - gaussian_log_prob(z, proposal)
        acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
    return acc - math.log(samples)


class CllPerImage(NamedTuple):
    """-log p(y | x) of the hidden pixels, nats, float64, (N,) each."""

    importance: torch.Tensor  # S samples from q(z | x, y)
    prior_mc: torch.Tensor  # S samples from p(z | x)
    nelbo: torch.Tensor  # one-sample negative ELBO (what Pyro's table computes, with Trace_ELBO)
    baseline: torch.Tensor  # the deterministic baseline's cross-entropy


@torch.no_grad()
def batch_conditional_nll(
    models: CompletionModels,
    *,
    x: torch.Tensor,
    target: torch.Tensor,
    hidden: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
) -> CllPerImage:
    """Every estimate of -log p(y | x) for one batch: x (B, D), target (B, HW) in {0, 1}, hidden (B, HW).

    Only `target * hidden` is read from the target, so its given pixels cannot matter.
    """
    if samples < 1:
        raise CVAEError(f"the number of samples must be at least 1 to estimate -log p(y | x), got {samples}")
    y = target * hidden

    def log_lik(z: torch.Tensor) -> torch.Tensor:  # (S', B, Z) -> (S', B)
        return -masked_bernoulli_nll(logits=models.cvae.generation(x, z), target=y, hidden=hidden)

    q, p = models.cvae.posterior(x, y), models.cvae.prior(x)
    kw: dict[str, Any] = dict(log_likelihood=log_lik, prior=p, samples=samples, generator=generator)
    importance = -log_likelihood_estimate(proposal=q, **kw)
    prior_mc = -log_likelihood_estimate(proposal=None, **kw)
    eps = torch.randn(q.mu.shape, generator=generator).to(q.mu.device, q.mu.dtype)
    nelbo = -log_lik((q.mu + q.std * eps)[None])[0] + kl_diag_gaussians(q=q, p=p)
    baseline = masked_bernoulli_nll(logits=models.baseline(x), target=y, hidden=hidden)
    return CllPerImage(importance.cpu(), prior_mc.cpu(), nelbo.double().cpu(), baseline.double().cpu())


@torch.no_grad()
def conditional_nll(
    models: CompletionModels,
    images: torch.Tensor,
    *,
    quadrants: int,
    samples: int = 100,
    batch_size: int = 250,
    seed: int = EVAL_SEED,
) -> CllPerImage:
    """The paper's metric on binarized `images` (N, 1, H, W) with `quadrants` given, per image."""
    device = next(models.parameters()).device
    was_training = models.training
    models.eval()
    gen = torch.Generator().manual_seed(seed)
    parts: list[CllPerImage] = []
    try:
        for start in range(0, len(images), batch_size):
            target = images[start : start + batch_size].to(device).reshape(-1, models.config.pixels)
            x, hidden = models.inputs(target, quadrants)
            parts.append(
                batch_conditional_nll(models, x=x, target=target, hidden=hidden, samples=samples, generator=gen)
            )
    finally:
        models.train(was_training)
    if not parts:
        return CllPerImage(*(torch.zeros(0, dtype=torch.float64) for _ in CllPerImage._fields))
    return CllPerImage(*(torch.cat(column) for column in zip(*parts, strict=True)))


def summarize(per_image: CllPerImage, *, quadrants: int, samples: int) -> dict[str, Any]:
    """Means and standard errors of every estimate, nats per image."""
    report: dict[str, Any] = {"quadrants": quadrants, "samples": samples, "images": len(per_image.baseline)}
    for name in CllPerImage._fields:
        report[f"{name}_nll"], report[f"{name}_nll_se"] = mean_se(getattr(per_image, name))
    return report


def format_summary(r: dict[str, Any]) -> str:
    def num(key: str) -> str:
        return f"{r[f'{key}_nll']:.2f} +- {r[f'{key}_nll_se']:.2f}"

    return "\n".join(
        [
            f"-log p(y | x) of the hidden pixels, nats per image, {r['quadrants']} quadrant(s) given, "
            f"{r['images']} test images (+- one standard error)",
            f"  CVAE, importance sampling (S={r['samples']} from q(z | x, y)):  {num('importance')}",
            f"  CVAE, Monte Carlo (S={r['samples']} from p(z | x)):          {num('prior_mc')}",
            f"  CVAE, negative ELBO (1 sample; Pyro's table):          {num('nelbo')}",
            f"  baseline network (deterministic):                      {num('baseline')}",
        ]
    )


def report_text(report: dict[str, dict[str, Any]], *, as_json: bool) -> str:
    """`evaluate_run`'s report as the commands print it: one summary per quadrant count, or JSON."""
    return json.dumps(clean_json(report), indent=2) if as_json else "\n".join(map(format_summary, report.values()))


# ------------------------------------------------------------------ completions (for pictures and the app)


class Completions(NamedTuple):
    """Images (H, W) in [0, 1]; completions keep the given pixels as they are."""

    given: torch.Tensor  # the input: given pixels, hidden ones at 0.5 (grey)
    baseline: torch.Tensor  # the baseline's pixel probabilities on the hidden part
    samples: torch.Tensor  # (S, H, W): the CVAE's pixel probabilities, one z ~ p(z | x) each


@torch.no_grad()
def complete(
    models: CompletionModels,
    image: torch.Tensor,
    *,
    quadrants: int,
    samples: int = 8,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Completions:
    """Complete one binarized image (H, W), (1, H, W) or (1, 1, H, W) from its first `quadrants` quadrants.

    z = mu(x) + std(x) * eps with eps ~ N(0, I) drawn here, or given as
    `noise` (S, Z): a latent slider passes eps = t * direction.
    """
    c = models.config
    device = next(models.parameters()).device
    if image.numel() != c.pixels:
        raise CVAEError(f"expected one {c.height}x{c.width} image, got shape {tuple(image.shape)}")
    was_training = models.training
    models.eval()
    try:
        flat = image.reshape(1, c.pixels).float().to(device)
        x, hidden = models.inputs(flat, quadrants)
        p = models.cvae.prior(x)
        if noise is None:
            noise = torch.randn(samples, c.latent_dim, generator=generator)
        noise = noise.to(device, p.mu.dtype)
        if noise.ndim != 2 or noise.shape[1] != c.latent_dim:
            raise CVAEError(f"noise must have shape (S, {c.latent_dim}), got {tuple(noise.shape)}")
        z = p.mu + p.std * noise  # (S, Z)
        probs = torch.sigmoid(models.cvae.generation(x.expand(len(z), -1), z))  # (S, HW)
        base = torch.sigmoid(models.baseline(x))  # (1, HW)
    finally:
        models.train(was_training)
    given = flat * (1 - hidden)
    shape = (c.height, c.width)
    return Completions(
        given=(given + 0.5 * hidden).reshape(shape).cpu(),
        baseline=(given + base * hidden).reshape(shape).cpu(),
        samples=(given + probs * hidden).reshape(-1, *shape).cpu(),
    )


def completion_png(completions: Completions, truth: torch.Tensor, *, scale: int = 4) -> bytes:
    """One row: given | truth | baseline | CVAE samples..., scaled up, with a line of captions above."""
    from PIL import Image, ImageDraw

    tiles = [completions.given, truth.reshape(completions.given.shape), completions.baseline, *completions.samples]
    h, w = completions.given.shape
    pad, top = 4, 14
    strip = Image.new("L", (len(tiles) * (w * scale + pad) + pad, h * scale + top + pad), 255)
    for i, tile in enumerate(tiles):
        array = tile.clamp(0, 1).mul(255).round().byte().numpy()
        picture = Image.fromarray(255 - array).resize((w * scale, h * scale), Image.NEAREST)  # dark ink on white
        strip.paste(picture, (pad + i * (w * scale + pad), top))
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(["given", "truth", "baseline", "CVAE samples ->"]):
        draw.text((pad + i * (w * scale + pad), 1), text, fill=0)
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------ training


@dataclass
class CompletionResult:
    run_dir: Path
    metrics: list[dict] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def _load_images(train: CompletionTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Statically binarized MNIST (pixel >= 0.5), train and test, (N, 1, 28, 28)."""
    from cvae.data import load_mnist, resolve_data_dir

    data = load_mnist(resolve_data_dir(train.data_dir))
    train_x, test_x = data.train_x, data.test_x
    if train.train_subset:
        train_x = train_x[: train.train_subset]
    if train.test_subset:
        test_x = test_x[: train.test_subset]
    return (train_x >= 0.5).float(), (test_x >= 0.5).float()


def test_digits(data_dir: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The binarized MNIST test digits (N, 1, 28, 28) as the completion models see them, and their labels (N,)."""
    from cvae.data import load_mnist, resolve_data_dir

    data = load_mnist(resolve_data_dir(data_dir))
    return (data.test_x >= 0.5).float(), data.test_y


def _batch_counts(config: CompletionConfig, n: int, gen: torch.Generator) -> torch.Tensor:
    if config.quadrants:
        return torch.full((n,), config.quadrants)
    return torch.randint(1, 4, (n,), generator=gen)


@torch.no_grad()
def _test_losses(models: CompletionModels, images: torch.Tensor, epoch: int) -> dict[str, float]:
    """Test negative ELBO (one z each, seeded) and baseline NLL, nats per image, with every k the model knows."""
    models.eval()
    counts = [models.config.quadrants] if models.config.quadrants else [1, 2, 3]
    out: dict[str, float] = {}
    with torch.random.fork_rng():
        torch.manual_seed(EVAL_SEED + epoch)
        for k in counts:
            nelbo, base = [], []
            for start in range(0, len(images), 1000):
                target = images[start : start + 1000].reshape(-1, models.config.pixels)
                x, hidden = models.inputs(target, k)
                terms = completion_loss(models, x=x, target=target, hidden=hidden)
                nelbo.append(terms.nelbo)
                base.append(terms.baseline)
            suffix = "" if models.config.quadrants else f"_q{k}"
            out[f"test_nelbo{suffix}"] = float(torch.cat(nelbo).mean()) if nelbo else math.nan
            out[f"test_baseline_nll{suffix}"] = float(torch.cat(base).mean()) if base else math.nan
    models.train()
    return out


def train_completion(
    config: CompletionConfig,
    train: CompletionTrainConfig,
    *,
    run_dir: Path | None = None,
    runs_root: Path | None = None,
    resume: Path | None = None,
    quiet: bool = False,
) -> CompletionResult:
    """Train the CVAE and its baseline; write config.json, metrics.jsonl, status.json and checkpoints.

    Resuming (`resume` = a run folder or checkpoint) trains `train.epochs` more
    epochs (as cvae.train does) with the saved model config, optimizer, RNG state,
    seed and data subsets; `config` is then ignored.
    """
    train.validate()
    payload: dict | None = None
    if resume is not None:
        payload = load_completion_checkpoint(resume)
        config = CompletionConfig.from_dict(payload["config"]["model"])  # the saved model wins over `config`
        saved = CompletionTrainConfig.from_dict(payload["config"].get("train", {}))
        # the data and the seed define the experiment: kept; the optimisation knobs come from `train`
        train = replace(
            train, seed=saved.seed, data_dir=saved.data_dir, train_subset=saved.train_subset,
            test_subset=saved.test_subset,
        )  # fmt: skip
        resume_path = Path(resume)
        run_dir = run_dir or (resume_path if resume_path.is_dir() else resume_path.parent.parent)
    config.validate()
    _set_threads(train.threads)
    torch.manual_seed(train.seed)
    train_x, test_x = _load_images(train)
    if not len(train_x):
        raise CVAEError("the training set is empty")
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-MNIST-completion-q{config.quadrants or 'mixed'}-z{config.latent_dim}"
        run = run_path(Path(runs_root) if runs_root else default_runs_root(), name)
    else:
        run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)

    models = CompletionModels(config)
    optimizer = torch.optim.Adam(models.parameters(), lr=train.learning_rate)
    start_epoch = 0
    if payload is not None:
        try:
            models.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            torch.set_rng_state(payload["rng_cpu"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint does not fit this model: {str(err).splitlines()[0][:200]}") from None
        for group in optimizer.param_groups:
            group["lr"] = train.learning_rate
        start_epoch = int(payload.get("epoch", 0))
    end_epoch = start_epoch + train.epochs  # as cvae.train: on resume, --epochs means that many more
    full_config = {"kind": KIND, "condition": "quadrants", "model": config.to_dict(), "train": asdict(train),
                   "quadrant_order": list(QUADRANT_ORDER), "binarize": "static",
                   "dataset_info": {"name": "MNIST", "channels": 1, "height": config.height, "width": config.width},
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    write_json(run.config_path, full_config)
    if payload is not None:  # drop metric lines of epochs the checkpoint does not have
        kept = [r for r in run.read_metrics() if int(r.get("epoch", 0)) <= start_epoch]
        write_atomic(run.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    else:
        write_atomic(run.metrics_path, b"")
    # pid and process identity, as cvae.train writes them, so that readers can tell a dead trainer
    run.write_status(
        state="running",
        pid=os.getpid(),
        process=process_identity(os.getpid()),
        epoch=start_epoch,
        epochs=end_epoch,
        message="",
    )
    result = CompletionResult(run.path)
    gen = torch.Generator().manual_seed(train.seed * 1000 + start_epoch)
    if not quiet:
        print(f"run {run.path}  |  {len(train_x)} train / {len(test_x)} test  |  quadrants given: "
              f"{config.quadrants or '1-3 at random'}, z={config.latent_dim}, hidden={list(config.hidden)}, "
              f"alpha={config.alpha}", flush=True)  # fmt: skip
    t_run = time.time()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, end_epoch + 1):
            t0 = time.time()
            models.train()
            order = torch.randperm(len(train_x), generator=gen)
            sums = {"nelbo": 0.0, "kl": 0.0, "baseline": 0.0}
            for start in range(0, len(order), train.batch_size):
                idx = order[start : start + train.batch_size]
                target = train_x[idx].reshape(len(idx), -1)
                x, hidden = models.inputs(target, _batch_counts(config, len(idx), gen))
                terms = completion_loss(models, x=x, target=target, hidden=hidden)
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                optimizer.step()
                sums["nelbo"] += float(terms.nelbo.detach().sum())
                sums["kl"] += float(terms.kl.detach().sum())
                sums["baseline"] += float(terms.baseline.detach().sum())
            record = {
                "epoch": epoch,
                **{f"train_{k}": v / len(train_x) for k, v in sums.items()},
                **_test_losses(models, test_x, epoch),
                "seconds": time.time() - t0,
                "time": time.time() - t_run,
            }
            save_checkpoint(
                run.latest_checkpoint,
                dict(kind=KIND, config=full_config, epoch=epoch, model=models.state_dict(),
                     optimizer=optimizer.state_dict(), metrics=record, rng_cpu=torch.get_rng_state()),
            )  # fmt: skip
            with open(run.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            result.metrics.append(record)
            run.write_status(epoch=epoch, last=record)
            if not quiet:
                tests = "  ".join(f"{k} {v:.2f}" for k, v in record.items() if k.startswith("test_"))
                print(f"epoch {epoch}/{end_epoch}  train -ELBO {record['train_nelbo']:.2f} "
                      f"(KL {record['train_kl']:.2f}), baseline {record['train_baseline']:.2f}  |  {tests}  "
                      f"|  {record['seconds']:.1f} s", flush=True)  # fmt: skip
        if train.eval_samples:
            run.write_status(message="estimating -log p(y | x) on the test set")
            result.evaluation = evaluate_models(models, test_x, samples=train.eval_samples)
            write_json(run.path / "evaluation.json", result.evaluation)
        _write_samples(models, test_x, run)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM under cvae.train (exit 130 / 143)
        with contextlib.suppress(OSError):
            run.write_status(state="stopped", message=f"stopped in epoch {epoch}: the last finished epoch's "
                             "checkpoint is kept")  # fmt: skip
        raise
    except BaseException as err:
        message = str(err) if isinstance(err, CVAEError) else f"{type(err).__name__}: {err}"
        with contextlib.suppress(OSError):
            run.write_status(state="failed", message=message.splitlines()[0][:500] if message else "failed")
        raise
    run.write_status(state="finished", message="")
    return result


def evaluate_models(models: CompletionModels, images: torch.Tensor, *, samples: int) -> dict[str, Any]:
    """{'q1': summary, ...} for every quadrant count the model was trained for."""
    counts = [models.config.quadrants] if models.config.quadrants else [1, 2, 3]
    return {
        f"q{k}": summarize(conditional_nll(models, images, quadrants=k, samples=samples), quadrants=k, samples=samples)
        for k in counts
    }


def _write_samples(models: CompletionModels, test_x: torch.Tensor, run: RunDir, digits: int = 4) -> None:
    """artifacts/completions_qK.png: a few test digits, each given | truth | baseline | 8 CVAE samples."""
    from PIL import Image

    counts = [models.config.quadrants] if models.config.quadrants else [1, 2, 3]
    for k in counts:
        rows = []
        for i in range(min(digits, len(test_x))):
            gen = torch.Generator().manual_seed(i)
            rows.append(Image.open(io.BytesIO(completion_png(complete(
                models, test_x[i], quadrants=k, samples=8, generator=gen), test_x[i]))))  # fmt: skip
        if not rows:
            continue
        sheet = Image.new("L", (rows[0].width, sum(r.height for r in rows)), 255)
        for j, r in enumerate(rows):
            sheet.paste(r, (0, j * rows[0].height))
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        write_atomic(run.artifacts / f"completions_q{k}.png", buffer.getvalue())


# ------------------------------------------------------------------ as cvae.train_model(condition="quadrants")

# The train_model options this trainer uses. Any other given with a value other than its default is refused, so
# that nothing is silently ignored (cvae.training validates dataset, arch, decoder and binarize before this).
USED_OPTIONS = frozenset({
    "condition", "quadrants", "dataset", "data_dir", "binarize", "train_subset", "test_subset", "latent_dim",
    "decoder_type", "arch", "mlp_hidden", "epochs", "batch_size", "learning_rate", "seed", "threads", "resume_path",
    "run_dir", "runs_root", "overwrite", "quiet",
})  # fmt: skip


def is_completion_run(path: Path | str) -> bool:
    """True if `path`, a run folder or a checkpoint file, holds a quadrant-completion run."""
    path = Path(path)
    if path.is_dir():
        return (read_json(RunDir(path).config_path) or {}).get("kind") == KIND
    try:
        return load_checkpoint(path).get("kind") == KIND
    except CVAEError:
        return False


def train_from_options(opts: dict[str, Any], given: set[str]) -> CompletionResult:
    """`cvae.train_model(condition="quadrants", ...)` and `python -m cvae.train --condition quadrants`.

    `opts`: the resolved options (cvae.training.resolve_options: defaults, the completion preset
    cvae.config.COMPLETION, then what was given); `given`: the names the caller set. The run folder is
    a normal one (config.json says kind and condition, status.json, metrics.jsonl, checkpoints/latest.pt,
    the writer lock); the -log p(y | x) estimates are left to `python -m cvae.evaluate RUN`.
    """
    unused = sorted(n for n in given if n not in USED_OPTIONS and opts[n] != DEFAULTS[n])
    if unused:
        raise ConfigError(f"condition quadrants trains cvae.completion's model, which has no {', '.join(unused)}: "
                          "drop it")  # fmt: skip
    resume = Path(opts["resume_path"]) if opts["resume_path"] else None
    q = opts["quadrants"]
    config = CompletionConfig(quadrants=q, latent_dim=opts["latent_dim"], hidden=tuple(opts["mlp_hidden"]),
                              mask_channel=q == 0).validate()  # fmt: skip
    train = CompletionTrainConfig(
        epochs=opts["epochs"], batch_size=opts["batch_size"], learning_rate=opts["learning_rate"], seed=opts["seed"],
        threads=opts["threads"], data_dir=opts["data_dir"], train_subset=opts["train_subset"],
        test_subset=opts["test_subset"], eval_samples=0,
    ).validate()  # fmt: skip
    if resume is not None:  # the saved run's model and optimisation, unless given (train_completion keeps the data)
        saved = load_completion_checkpoint(resume)["config"]
        saved_model = CompletionConfig.from_dict(saved["model"])
        for name, field_name in (("quadrants", "quadrants"), ("latent_dim", "latent_dim"), ("mlp_hidden", "hidden")):
            if name in given and getattr(config, field_name) != getattr(saved_model, field_name):
                raise ConfigError(f"the checkpoint was trained with {name}={getattr(saved_model, field_name)}; "
                                  "drop that option or start a new run")  # fmt: skip
        kept = CompletionTrainConfig.from_dict(saved.get("train", {}))
        train = replace(train, **{k: getattr(kept, k) for k in ("batch_size", "learning_rate") if k not in given})
    if opts["run_dir"]:
        run = RunDir(Path(opts["run_dir"]))
    elif resume is not None:
        run = RunDir(resume if resume.is_dir() else resume.parent.parent)
    else:
        root = Path(opts["runs_root"]) if opts["runs_root"] else default_runs_root()
        run = fresh_run_path(
            root, f"{time.strftime('%Y%m%d-%H%M%S')}-MNIST-completion-q{q or 'mixed'}-z{config.latent_dim}"
        )
    with run.lock():  # one writer per run folder, as cvae.train
        if resume is None and run.holds_run():
            if not opts["overwrite"]:
                raise CVAEError(f"{run.path} already holds a run: continue it with python -m cvae.train -rp "
                                f"{run.path} -e N, or pass --overwrite to replace it")  # fmt: skip
            run.clear_run()
        return train_completion(config, train, run_dir=run.path, resume=resume, quiet=opts["quiet"])


# ------------------------------------------------------------------ loading


def load_completion_checkpoint(path: Path | str) -> dict:
    """A quadrant-completion checkpoint (run folder or .pt), weights only, or a one-line CheckpointError."""
    payload = load_checkpoint(path)
    config = payload.get("config")
    if payload.get("kind") != KIND or not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path} is not a quadrant-completion run (train one with python -m cvae.completion)")
    return payload


def load_models(path: Path | str, *, device: str | torch.device = "cpu") -> CompletionModels:
    """The trained CVAE + baseline of a run folder or checkpoint, in eval mode."""
    payload = load_completion_checkpoint(path)
    models = CompletionModels(CompletionConfig.from_dict(payload["config"]["model"]))
    try:
        models.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit its own config: {str(err).splitlines()[0][:200]}"
        ) from None
    return models.to(device).eval()


def evaluate_run(
    path: Path | str, *, samples: int = 100, test_subset: int | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """-log p(y | x) of a trained run on the (binarized) MNIST test set, as evaluate_models."""
    payload = load_completion_checkpoint(path)
    models = load_models(path)
    saved = CompletionTrainConfig.from_dict(payload["config"].get("train", {}))
    train = CompletionTrainConfig(
        data_dir=saved.data_dir if data_dir is None else data_dir, train_subset=1, test_subset=test_subset
    )
    _, test_x = _load_images(train)
    return evaluate_models(models, test_x, samples=samples)


def figure_run(
    path: Path | str,
    *,
    index: int = 0,
    samples: int = 8,
    seed: int = 0,
    quadrants: int | None = None,
    data_dir: str | None = None,
) -> bytes:
    """PNG bytes: test digit `index`, given | truth | baseline | `samples` CVAE completions (see completion_png)."""
    payload = load_completion_checkpoint(path)
    models = load_models(path)
    saved = CompletionTrainConfig.from_dict(payload["config"].get("train", {}))
    _, test_x = _load_images(CompletionTrainConfig(data_dir=saved.data_dir if data_dir is None else data_dir))
    if not 0 <= index < len(test_x):
        raise CVAEError(f"--figure-index must be between 0 and {len(test_x) - 1}, got {index}")
    k = models.config.quadrants or quadrants or 1
    gen = torch.Generator().manual_seed(seed)
    return completion_png(complete(models, test_x[index], quadrants=k, samples=samples, generator=gen), test_x[index])


# ------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    d, t = CompletionConfig(), CompletionTrainConfig()
    p = OneLineParser(
        prog="python -m cvae.completion",
        description="Train a CVAE (and the paper's deterministic baseline) to complete MNIST digits from 1-3 "
        "given quadrants (Sohn et al. 2015, section 5.1), or evaluate one with --evaluate.",
    )
    p.add_argument("--quadrants", type=number(int, low_open=False), default=d.quadrants,
                   help="quadrants given, in the order bottom-left, top-left, top-right (1-3); 0 = a random count "
                        f"per training image (with --mask-channel) [{d.quadrants}]")  # fmt: skip
    p.add_argument("--epochs", "-e", type=number(int), default=t.epochs, help=f"[{t.epochs}]")
    p.add_argument("--batch-size", "-b", type=number(int), default=t.batch_size, help=f"[{t.batch_size}]")
    p.add_argument("--learning-rate", "-lr", type=number(float), default=t.learning_rate,
                   help=f"Adam's learning rate [{t.learning_rate}]")  # fmt: skip
    p.add_argument("--latent-dim", "-z", type=number(int), default=d.latent_dim, help=f"[{d.latent_dim}]")
    p.add_argument("--hidden", type=number(int), nargs="+", default=list(d.hidden),
                   help=f"hidden widths of every network [{' '.join(map(str, d.hidden))}]")  # fmt: skip
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help="hybrid objective: alpha * (-ELBO) + (1 - alpha) * GSNN loss; 1 = the CVAE's ELBO "
                        f"alone [{d.alpha}]")  # fmt: skip
    p.add_argument("--mask-channel", action="store_true", help="also feed the mask of given pixels to every network")
    p.add_argument("--seed", type=number(int, low_open=False), default=t.seed, help=f"[{t.seed}]")
    p.add_argument("--threads", type=number(int, low_open=False), default=t.threads, help="CPU threads, 0 = all [0]")
    p.add_argument("--train-subset", type=number(int), default=None, help="train on the first N images only")
    p.add_argument("--test-subset", type=number(int), default=None, help="test on the first N images only")
    p.add_argument("--eval-samples", "-S", type=number(int, low_open=False), default=t.eval_samples,
                   help=f"samples S for the -log p(y | x) estimates after training; 0 skips them "
                        f"[{t.eval_samples}]")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw [data/]")
    p.add_argument("--run-dir", default=None, help="run folder to write [checkpoints/<time>-MNIST-completion-...]")
    p.add_argument("--runs-root", default=None, help="folder that holds run folders [checkpoints]")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue this run folder for --epochs more epochs")
    p.add_argument("--evaluate", default=None, metavar="RUN", help="only evaluate this trained run folder")
    p.add_argument("--json", action="store_true", help="with --evaluate: print one JSON object")
    p.add_argument("--figure", default=None, metavar="PNG",
                   help="with --evaluate: also write one test digit's completions (given | truth | baseline | "
                        "CVAE samples) to this PNG")  # fmt: skip
    p.add_argument("--figure-index", type=number(int, low_open=False), default=0, help="test digit for --figure [0]")
    p.add_argument("--figure-samples", type=number(int), default=8, help="CVAE samples in --figure [8]")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _set_threads(args.threads)
        if args.evaluate:
            if args.figure:
                png = figure_run(
                    args.evaluate, index=args.figure_index, samples=args.figure_samples, seed=args.seed,
                    quadrants=args.quadrants, data_dir=args.data_dir,
                )  # fmt: skip
                write_atomic(Path(args.figure), png)
            if args.eval_samples:  # --eval-samples 0: the figure only
                report = evaluate_run(
                    args.evaluate, samples=args.eval_samples, test_subset=args.test_subset, data_dir=args.data_dir
                )
                print(report_text(report, as_json=args.json))
            return 0
        config = CompletionConfig(
            quadrants=args.quadrants, latent_dim=args.latent_dim, hidden=tuple(args.hidden), alpha=args.alpha,
            mask_channel=args.mask_channel or args.quadrants == 0,
        ).validate()  # fmt: skip
        train = CompletionTrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
            threads=args.threads, data_dir=args.data_dir or "", train_subset=args.train_subset,
            test_subset=args.test_subset, eval_samples=args.eval_samples,
        ).validate()  # fmt: skip
        result = train_completion(
            config, train, run_dir=Path(args.run_dir) if args.run_dir else None,
            runs_root=Path(args.runs_root) if args.runs_root else None,
            resume=Path(args.resume) if args.resume else None, quiet=args.quiet,
        )  # fmt: skip
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if not args.quiet:
        for summary in (result.evaluation or {}).values():
            print(format_summary(summary))
        print(f"run folder {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
