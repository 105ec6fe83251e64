"""Test-set metrics in nats: the negative ELBO (reconstruction + KL), the
importance-weighted bound, and bits per dimension.

    python -m cvae.evaluate checkpoints/<run>                 # a table
    python -m cvae.evaluate checkpoints/<run> --json -k 1000  # JSON, tighter bound
    python -m cvae.evaluate checkpoints/<run> --gap-images 1000  # and how much the encoder loses

The training loop's per-epoch test numbers come from `evaluate_elbo`, which
is `elbo_per_image` averaged, so a run's metrics and this command agree by
construction (same seed, same single z sample per image).

Estimators (all per image, in nats, as float64):

- negative ELBO = -log p(x | z, y) + KL(q(z | x, y) || p(z)), one z ~ q
  (Kingma & Welling 2014); the KL is analytic.
- IWAE (Burda, Grosse & Salakhutdinov 2016, eq. 8): with K samples
  z_k ~ q(z | x, y) and log weights log w_k = log p(x | z_k, y) + log p(z_k)
  - log q(z_k | x, y), the bound log p(x | y) >= E[logsumexp_k log w_k - log K].
  It equals the ELBO at K = 1 and tightens monotonically (in expectation) to
  log p(x | y) as K grows. We report its negative, an upper bound on the NLL.
- K-particle Monte Carlo ELBO: the same K log weights averaged instead of
  log-mean-exp'd, (1/K) sum_k log w_k, its KL sampled rather than analytic:
  what Pyro's `Trace_ELBO(num_particles=K)` computes with q as the guide. Its
  expectation is the ELBO whatever K; K only lowers its noise.

Protocols (`--protocol`, digit-completion runs): `ours` evaluates the run on
its own data (binarized targets for the Bernoulli runs) with the estimators
above; `pyro` follows Pyro's CVAE tutorial (`examples/cvae`): grey targets in
[0, 1], not binarized, scored by Bernoulli cross-entropy on the hidden pixels
only, and its reported figure, the 10-particle Monte Carlo negative ELBO with
q as proposal. docs/completion.md sets the two side by side.

Bits per dimension, D = C * H * W values per image:

- Gaussian decoders on 8-bit images: a density on [0, 1] is not a
  probability of the stored pixels, so we discretize it. A pixel value
  v in {0..255} is stored as x = v / 255; its bin is [x - 1/510, x + 1/510],
  with the first bin extended to -inf and the last to +inf, so the 256 bin
  probabilities sum to 1 exactly. P(v | z, y) = Phi((upper - mean) / std) -
  Phi((lower - mean) / std), computed in float64 as a difference of log-CDFs
  in the lower tail (`discretized_gaussian_log_prob`). The discretized NLL
  (ELBO or IWAE, with the same KL / weights) gives bpd = NLL / (D ln 2).
- Bernoulli decoders: the data are binary pixels, so NLL / (D ln 2) is bits
  per *binary* dimension: not comparable with 8-bit figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from cvae.bounds import BOUNDS_IMAGES, BOUNDS_K, cli_bounds
from cvae.cli import OneLineParser, number
from cvae.config import PRECISIONS
from cvae.data import ImageData, load_data
from cvae.errors import CVAEError
from cvae.generate import load_run
from cvae.ledger import alarm, ledger
from cvae.likelihoods import HALF_LOG_2PI, DiagonalGaussian, mean_se, standard_normal_log_prob
from cvae.model import CVAE, STD_FLOOR, Condition
from cvae.runs import clean_json
from cvae.runtime import autocast, select_amp_dtype, select_device

EVAL_SEED = 1234  # the noise of z ~ q is fixed, so the same weights give the same numbers
DEFAULT_IW_SAMPLES = 100  # a tight bound at a cost of K decoder passes per image (docs/benchmark.md times it)
DEFAULT_GAP_STEPS = 300  # Adam steps per image batch when fitting q for the inference gap
GAP_CHUNK = 32  # z draws per decoder pass when estimating the two ELBOs of the inference gap
REFINE_LR = 0.05  # Adam's rate when refining q for the refined test ELBO (refined_nelbo)
MAX_ROWS = 1024  # decoder rows (images x samples) per forward pass: bounds memory
# The largest K accepted: the bound's gain from 1,000 to 5,000 samples is a fraction of a nat, while the
# time grows linearly with K (a conv model on a CPU: tens of minutes for the test set at K = 5,000).
# Memory does not grow with K: samples go through in chunks.
MAX_IW_SAMPLES = 5000
MAX_MAX_ROWS = 8192  # --max-rows above this would let one decoder pass take gigabytes
PROPOSALS = ("posterior", "prior")
# How a digit-completion run is measured: on its own data, or as Pyro's CVAE tutorial measures its own
# (grey targets, hidden pixels, its 10-particle -ELBO). The paper's (Sohn et al. 2015, Table 1) is not here:
# its table could not be read from the sources at hand, so what it measures cannot be followed (docs/completion.md).
PROTOCOLS = ("ours", "pyro")
PYRO_PARTICLES = 10  # examples/cvae/main.py's --num-particles default, the one its README table was made with
PROTOCOL_WORDS = {
    "ours": "ours: the run's own test data, -log p(y | x) by importance sampling from q",
    "pyro": f"Pyro's tutorial: grey targets (not binarized) scored by Bernoulli cross-entropy on the hidden pixels, "
            f"its figure the {PYRO_PARTICLES}-particle Monte Carlo -ELBO from q",
}  # fmt: skip
LEVELS = 256  # 8-bit pixels


# ------------------------------------------------------- discretized Gaussian


def _log_sub_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(exp(a) - exp(b)) for a >= b, stably (log1mexp, Maechler 2012)."""
    d = (b - a).clamp(max=0.0)  # <= 0
    small = d > -math.log(2)
    return a + torch.where(small, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def discretized_gaussian_log_prob(*, mean: torch.Tensor, std: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """log P(pixel level of x | N(mean, std^2)) per value, float64, same shape as x.

    x must hold 8-bit levels v / 255. Bin of level v: [(v - 0.5) / 255, (v + 0.5) / 255],
    with level 0 extended to -inf and level 255 to +inf. The probability
    Phi(b) - Phi(a) is evaluated where both ends are in the lower tail (the
    bin is reflected about the mean when it lies above it), as
    log_ndtr(b) + log(1 - exp(log_ndtr(a) - log_ndtr(b))), so neither a tiny
    bin far in a tail nor a bin near the mode loses precision.
    """
    x64 = x.double()
    mean64 = mean.double() if isinstance(mean, torch.Tensor) else torch.tensor(mean, dtype=torch.float64)
    std64 = std.double() if isinstance(std, torch.Tensor) else torch.tensor(float(std), dtype=torch.float64)
    v = torch.round(x64 * (LEVELS - 1))  # the level; edges from it exactly, not from float32 x
    lo = torch.where(v <= 0, -math.inf, (v - 0.5) / (LEVELS - 1))
    hi = torch.where(v >= LEVELS - 1, math.inf, (v + 0.5) / (LEVELS - 1))
    a = (lo - mean64) / std64
    b = (hi - mean64) / std64
    # Reflect bins above the mean: Phi(b) - Phi(a) = Phi(-a) - Phi(-b).
    flip = (a + b) > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    return _log_sub_exp(torch.special.log_ndtr(b), torch.special.log_ndtr(a))


def discretized_gaussian_nll(*, mean: torch.Tensor, std: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """-log P(8-bit image | z, y) in nats, summed per image: (B, ...) -> (B,), float64."""
    return -discretized_gaussian_log_prob(mean=mean, std=std, x=x).flatten(1).sum(1)


def is_8bit(x: torch.Tensor) -> bool:
    """True if every value is v / 255 for an integer v in 0..255 (to float32 rounding)."""
    if x.numel() == 0:
        return False
    scaled = x.double() * (LEVELS - 1)
    return bool((scaled - scaled.round()).abs().max() < 1e-3 and x.min() >= 0 and x.max() <= 1)


def _discrete_nll(model: CVAE, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    lik = model.likelihood
    out = out.float()
    return discretized_gaussian_nll(mean=lik.mean(out), std=lik.std(out), x=x)


# ------------------------------------------------------------------- ELBO


class ElboPerImage(NamedTuple):
    """Per-image terms in nats, float64, (N,). `recon_discrete` only when asked for, `baseline` for a model
    that trains one."""

    recon: torch.Tensor  # -log p(x | z, c), one z ~ q(z | x, c), over the scored pixels
    kl: torch.Tensor  # KL(q(z | x, c) || p(z | c)), analytic
    recon_discrete: torch.Tensor | None = None  # -log P(8-bit x | z, c), same z
    baseline: torch.Tensor | None = None  # the deterministic baseline's -log p(x | c)
    kl_dims: torch.Tensor | None = None  # (N, Z): the KL of each latent dimension (cvae.ledger)
    mu: torch.Tensor | None = None  # (N, Z): the posterior means (cvae.ledger's active units)

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@torch.no_grad()
def elbo_per_image(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1000,
    amp_dtype: torch.dtype | None = None,
    discretize: bool = False,
    seed: int = EVAL_SEED,
    quadrants: int | None = None,
) -> ElboPerImage:
    """The negative ELBO's terms for every image, one z sample each, in eval mode.

    Runs under a forked RNG seeded with `seed`, so it neither depends on nor
    disturbs the training noise; the terms are the model's own `objective`
    (the KL again in float64), so they equal training's under that seed.
    `quadrants`: a digit-completion model's given count (None: as trained).
    """
    device = _device(model)
    was_training = model.training
    model.eval()
    recon, kl, disc, base, kl_dims, mu = [], [], [], [], [], []
    try:
        with _forked_rng(device):
            torch.manual_seed(seed)
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(device, non_blocking=True)
                yb = y[start : start + batch_size].to(device, non_blocking=True)
                with autocast(device, amp_dtype):
                    t = model.objective(xb, yb, quadrants)
                recon.append(t.recon.double().cpu())
                q, p = t.posterior.double(), t.prior.double() if t.prior is not None else None
                kl.append(q.kl(p).cpu())
                kl_dims.append(q.kl_dims(p).cpu())
                mu.append(q.mu.cpu())
                if t.baseline is not None:
                    base.append(t.baseline.double().cpu())
                if discretize:
                    disc.append(_discrete_nll(model, t.out, xb).cpu())
    finally:
        model.train(was_training)
    empty = torch.zeros(0, dtype=torch.float64)
    cat = lambda ts: torch.cat(ts) if ts else empty  # noqa: E731
    return ElboPerImage(cat(recon), cat(kl), cat(disc) if discretize else None,
                        cat(base) if model.baseline is not None else None, cat(kl_dims), cat(mu))  # fmt: skip


def counts_of(model: CVAE) -> list[int | None]:
    """The given-quadrant counts a model is evaluated at: its own, or 1, 2 and 3 for a random-count
    model; [None] for a model whose condition is not a part of the image."""
    if model.config.condition != "quadrants":
        return [None]
    return [model.config.quadrants] if model.config.quadrants else [1, 2, 3]


@torch.no_grad()
def evaluate_elbo(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1000,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Mean negative ELBO, reconstruction and KL (and the baseline's NLL) over (x, y), one z per image.

    Runs in eval mode (batch-norm running statistics) under a forked RNG with
    a fixed seed, so it neither depends on nor disturbs the training noise.
    A random-count completion model is evaluated at 1, 2 and 3 given
    quadrants: `name_qK` for each, and `name` their mean.
    """
    counts = counts_of(model)
    out: dict[str, Any] = {}
    n = max(len(x), 1)
    seen = []
    for k in counts:
        terms = elbo_per_image(model, x, y, batch_size=batch_size, amp_dtype=amp_dtype, quadrants=k)
        seen.append(terms)
        recon, kl = float(terms.recon.sum()) / n, float(terms.kl.sum()) / n
        means = {"nelbo": recon + kl, "recon": recon, "kl": kl}
        if terms.baseline is not None:
            means["baseline_nll"] = float(terms.baseline.sum()) / n
        out.update(means if len(counts) == 1 else {f"{name}_q{k}": v for name, v in means.items()})
    if len(counts) > 1:
        for name in list(out):
            base = name.rsplit("_q", 1)[0]
            out.setdefault(base, sum(out[f"{base}_q{k}"] for k in counts) / len(counts))
    out.update(_ledger_of(seen))
    return out


def _ledger_of(parts: Sequence[ElboPerImage]) -> dict[str, Any]:
    """cvae.ledger's figures over every image of every given-quadrant count evaluated."""
    if any(p.kl_dims is None or p.mu is None for p in parts):
        return {}
    return ledger(torch.cat([p.kl_dims for p in parts]), torch.cat([p.mu for p in parts]))  # type: ignore[misc]


# ------------------------------------------------------------------- IWAE


class IwaePerImage(NamedTuple):
    """Importance-weighted bounds on log p(x | y) per image, nats, float64, (N,)."""

    log_px: torch.Tensor  # density bound: logsumexp_k log w_k - log K
    log_px_discrete: torch.Tensor | None = None  # same z_k, with the discretized decoder likelihood
    # (1/K) sum_k log w_k: with the posterior proposal the K-particle Monte Carlo ELBO, its KL sampled (Pyro's
    # Trace_ELBO(num_particles=K) with q as the guide); with the prior, E_p[log p(x | z, c)], the GSNN's
    mean_log_w: torch.Tensor | None = None


@torch.no_grad()
def iwae_per_image(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    k: int = DEFAULT_IW_SAMPLES,
    max_rows: int = MAX_ROWS,
    amp_dtype: torch.dtype | None = None,
    discretize: bool = False,
    seed: int = EVAL_SEED,
    proposal: str = "posterior",
    quadrants: int | None = None,
    posterior: DiagonalGaussian | None = None,
) -> IwaePerImage:
    """The K-sample importance-weighted estimate of log p(x | c) per image: the one estimator of every
    likelihood figure (of the scored pixels only, for a condition that shows part of the image).

    proposal "posterior": z_k ~ q(z | x, c), log w_k = log p(x | z_k, c) + log p(z_k | c) - log q(z_k | x, c),
    the IWAE bound (Burda et al. 2016, eq. 8; for digit completion the paper's importance sampler).
    proposal "prior": z_k ~ p(z | c), log w_k = log p(x | z_k, c), plain Monte Carlo from the prior.
    Either way logsumexp_k log w_k - log K is a lower bound on log p(x | c) in expectation. The same weights'
    plain mean, `mean_log_w`, is the K-particle Monte Carlo ELBO (posterior proposal). `posterior` (mu and std,
    (N, Z), a row per image): the q to sample from instead of the encoder's, such as the one
    `inference_gap_per_image` fitted to each image; any q gives a bound, a better one a tighter bound.

    Images go through in batches of `max_rows // k_chunk` and the K samples
    in chunks of `k_chunk` = min(K, max_rows), so a decoder pass never sees
    more than `max_rows` rows. Chunks are merged with a running logsumexp in
    float64; log q and log p(z) are computed in float64 from the standard
    normal noise, so the weights are exact up to the decoder's float32 NLL.
    """
    if k < 1 or k > MAX_IW_SAMPLES:
        raise CVAEError(f"the number of importance samples must be 1 to {MAX_IW_SAMPLES}, got {k}")
    if not 1 <= max_rows <= MAX_MAX_ROWS:
        raise CVAEError(f"max_rows must be 1 to {MAX_MAX_ROWS}, got {max_rows}")
    if proposal not in PROPOSALS:
        raise CVAEError(f"proposal must be one of {', '.join(PROPOSALS)}, got {proposal!r}")
    if posterior is not None and (proposal != "posterior" or len(posterior.mu) != len(x)):
        raise CVAEError("a given posterior needs proposal 'posterior' and one row per image")
    device = _device(model)
    was_training = model.training
    model.eval()
    k_chunk = min(k, max_rows)
    images = max(1, max_rows // k_chunk)
    out_c, out_d, out_m = [], [], []
    try:
        with _forked_rng(device):
            torch.manual_seed(seed)
            for start in range(0, len(x), images):
                xb = x[start : start + images].to(device, non_blocking=True)
                yb = y[start : start + images].to(device, non_blocking=True)
                b = len(xb)
                with autocast(device, amp_dtype):
                    cond = model.condition(xb, yb, quadrants)
                    post = model.encode(xb, cond)
                    prior = model.prior(cond)
                if posterior is not None:
                    post = DiagonalGaussian(*(t[start : start + images].to(device) for t in posterior))
                mu, std = post.mu.float(), post.std.float()  # (B, Z)
                prior = prior.float() if prior is not None else None
                acc_c = torch.full((b,), -math.inf, dtype=torch.float64)
                acc_d = torch.full((b,), -math.inf, dtype=torch.float64)
                sum_w = torch.zeros(b, dtype=torch.float64)
                for k0 in range(0, k, k_chunk):
                    kc = min(k_chunk, k - k0)
                    eps = torch.randn(kc, b, mu.shape[1], device=device)  # (kc, B, Z)
                    source = DiagonalGaussian(mu, std) if proposal == "posterior" else prior
                    z = eps if source is None else source.mu + source.std * eps  # (kc, B, Z)
                    eps64, z64 = eps.double(), z.double()
                    log_pz = standard_normal_log_prob(z64) if prior is None else prior.log_prob(z64)  # (kc, B)
                    xr = xb.expand(kc, *xb.shape).reshape(kc * b, *xb.shape[1:])  # (kc*B, C, H, W)
                    scored = None if cond.scored is None else \
                        cond.scored.expand(kc, *cond.scored.shape).reshape(kc * b, *cond.scored.shape[1:])  # fmt: skip
                    with autocast(device, amp_dtype):
                        out = model.decode_samples(z, cond)
                    log_px_z = -model.likelihood.nll(out, xr, scored).double().view(kc, b)
                    if proposal == "posterior":
                        log_q = (-0.5 * eps64.pow(2) - std.double().log() - HALF_LOG_2PI).sum(-1)  # (kc, B)
                        log_w = (log_px_z + log_pz - log_q).cpu()
                    else:
                        log_w = log_px_z.cpu()
                    acc_c = torch.logaddexp(acc_c, torch.logsumexp(log_w, 0))
                    sum_w += log_w.sum(0)
                    if discretize:
                        log_px_z_d = -_discrete_nll(model, out, xr).view(kc, b)
                        log_w_d = (log_px_z_d + log_pz - log_q).cpu() if proposal == "posterior" else log_px_z_d.cpu()
                        acc_d = torch.logaddexp(acc_d, torch.logsumexp(log_w_d, 0))
                out_c.append(acc_c - math.log(k))
                out_m.append(sum_w / k)
                if discretize:
                    out_d.append(acc_d - math.log(k))
    finally:
        model.train(was_training)
    empty = torch.zeros(0, dtype=torch.float64)
    log_px = torch.cat(out_c) if out_c else empty
    return IwaePerImage(log_px, (torch.cat(out_d) if out_d else empty) if discretize else None,
                        torch.cat(out_m) if out_m else empty)  # fmt: skip


def entropy_floor(model: CVAE, x: torch.Tensor, quadrants: int) -> torch.Tensor:
    """Per image, the least cross-entropy any Bernoulli decoder can reach on the hidden pixels of grey targets
    x: their own entropy, sum of -x log x - (1 - x) log(1 - x) over those pixels, float64, (N,); 0 where the
    targets are binary. A figure on grey targets minus this is what a model can still improve."""
    hidden = 1.0 - model.quadrant_masks[quadrants - 1].cpu().double()  # (C*H*W,)
    x64 = x.flatten(1).double()
    return ((torch.special.entr(x64) + torch.special.entr(1.0 - x64)) * hidden).sum(1)


# ---------------------------------------------------------- inference gap


class InferenceGapPerImage(NamedTuple):
    """Negative ELBOs per image, nats, float64, (N,), both with the same `samples` draws of z."""

    amortized: torch.Tensor  # q from the encoder
    optimized: torch.Tensor  # q = N(mu, std^2) fitted to this one image, starting from the encoder's
    fitted: DiagonalGaussian | None = None  # that q's mu and std, (N, Z), float32


def inference_gap_per_image(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = DEFAULT_GAP_STEPS,
    lr: float = 1e-2,
    train_samples: int = 16,
    samples: int = 256,
    batch_size: int = 500,
    seed: int = EVAL_SEED,
    quadrants: int | None = None,
    on_step: Callable[[float], None] | None = None,
) -> InferenceGapPerImage:
    """How much better a per-image Gaussian posterior does than the encoder's (the amortization gap).

    `on_step(share)`: told after each Adam step the share of all the steps done (a progress bar's).

    For each image the Gaussian q(z | x, y) = N(mu, std^2) starts at the
    encoder's output and is fitted by `steps` Adam steps on that image's
    negative ELBO (`train_samples` z draws per step), with the model's weights
    fixed (Cremer, Li & Duvenaud 2018, "Inference suboptimality in VAEs").
    Both ELBOs are then estimated with the same `samples` draws of the
    standard-normal noise. `amortized - optimized` is the amortization gap: what
    a better encoder could gain with the same decoder; the fitted ELBO is still
    a lower bound on log p(x | y), so the IWAE bound is usually at or below it.
    """
    device = _device(model)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def nelbo(mu: torch.Tensor, std: torch.Tensor, xb: torch.Tensor, cond: Condition,
              prior: DiagonalGaussian | None, eps: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Mean over the draws eps (n, B, Z) of -log p(x | z, c), plus the analytic KL: (B,)."""
        n = len(eps)
        z = (mu + std * eps).flatten(0, 1)  # (n * B, Z), draw-major
        out = model.decode(z, Condition(cond.code.repeat(n, 1), None))
        scored = None if cond.scored is None else cond.scored.repeat(n, *([1] * (xb.dim() - 1)))
        recon = model.likelihood.nll(out, xb.repeat(n, *([1] * (xb.dim() - 1))), scored).view(n, -1).mean(0)
        return recon + DiagonalGaussian(mu, std).kl(prior)

    amortized, optimized, fitted_mu, fitted_std = [], [], [], []
    try:
        with _forked_rng(device):
            torch.manual_seed(seed)
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device)
                with torch.no_grad():
                    cond = model.condition(xb, yb, quadrants)
                    post = model.encode(xb, cond)
                    prior = model.prior(cond)
                mu = post.mu.detach().clone().requires_grad_(True)
                # std = softplus(raw) + floor, as the encoder's: start from the encoder's std
                raw = (post.std - STD_FLOOR).clamp_min(1e-12)
                raw = (raw + torch.log(-torch.expm1(-raw))).detach().requires_grad_(True)  # softplus^-1
                opt = torch.optim.Adam([mu, raw], lr=lr)
                for step in range(steps):
                    eps = torch.randn(train_samples, *mu.shape, device=device)
                    loss = nelbo(mu, torch.nn.functional.softplus(raw) + STD_FLOOR, xb, cond, prior, eps)
                    opt.zero_grad(set_to_none=True)
                    loss.sum().backward()  # the images are independent: each gets its own gradient
                    opt.step()
                    if on_step is not None:
                        on_step((start + len(xb) * (step + 1) / steps) / len(x))
                with torch.no_grad():
                    std = torch.nn.functional.softplus(raw) + STD_FLOOR
                    a_sum = torch.zeros(len(xb), dtype=torch.float64, device=device)
                    o_sum = torch.zeros_like(a_sum)
                    for done in range(0, samples, GAP_CHUNK):
                        eps = torch.randn(min(GAP_CHUNK, samples - done), *mu.shape, device=device)
                        a_sum += nelbo(post.mu, post.std, xb, cond, prior, eps).double() * len(eps)  # same draws
                        o_sum += nelbo(mu, std, xb, cond, prior, eps).double() * len(eps)
                amortized.append((a_sum / samples).cpu())
                optimized.append((o_sum / samples).cpu())
                fitted_mu.append(mu.detach().cpu())
                fitted_std.append(std.cpu())
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    empty = torch.zeros(0, dtype=torch.float64)
    fitted = DiagonalGaussian(torch.cat(fitted_mu), torch.cat(fitted_std)) if fitted_mu else None
    return InferenceGapPerImage(
        torch.cat(amortized) if amortized else empty, torch.cat(optimized) if optimized else empty, fitted
    )


def refined_nelbo(model: CVAE, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float = REFINE_LR,
                  quadrants: int | None = None) -> float:  # fmt: skip
    """Mean negative ELBO over (x, y) with the encoder's q refined per image by `steps` Adam steps.

    Test-time iterative inference (the test-time half of semi-amortized VAEs,
    Kim et al. 2018): q starts at the encoder's output and takes `steps` steps
    on its own image's one-draw negative ELBO, the model fixed; the ELBO is then
    estimated with one fresh draw per image, as `evaluate_elbo` does. Any q
    gives a lower bound on log p(x | y), so this is a real test ELBO, only
    tighter; `evaluate_elbo` - this is the part of the amortization gap
    that `steps` steps recover. Runs in float32 under a fixed seed.

    Batches of 1000 images; on a GPU, 5000 for an MLP: its eager steps are
    launch-bound, so fewer, larger batches are faster, at about 100 MB more for
    two batches (a conv decoder's would hold GBs).
    """
    if len(x) == 0:
        return math.nan
    batch = 5000 if _device(model).type == "cuda" and model.config.arch == "mlp" else 1000
    gap = inference_gap_per_image(model, x, y, steps=steps, lr=lr, train_samples=1, samples=1, batch_size=batch,
                                  quadrants=quadrants)  # fmt: skip
    return float(gap.optimized.mean())


# ------------------------------------------------------------- the report


def evaluate_model(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    batch_size: int = 1000,
    max_rows: int = MAX_ROWS,
    amp_dtype: torch.dtype | None = None,
    seed: int = EVAL_SEED,
    gap_images: int = 0,
    gap_steps: int = DEFAULT_GAP_STEPS,
    particles: int = 0,
) -> dict[str, float | int | str | None]:
    """Every test-set number of `python -m cvae.evaluate`, as a flat dict.

    Nats per image throughout; `*_se` are standard errors over images. The
    Gaussian decoder's `nelbo`/`iwae_nll` are densities on [0, 1]^D (they can
    be negative); its `*_discrete` numbers and bits/dim are for the 8-bit
    pixels (see the module docstring). `iw_samples = 0` skips the IWAE bound.

    A digit-completion model scores the hidden pixels given the shown ones:
    every figure is -log p(y | x) of those pixels, plus `prior_mc_nll` (the same
    K samples drawn from the prior p(z | x) instead of q) and `baseline_nll`
    (the deterministic baseline's, exact). A random-count model is evaluated at
    1, 2 and 3 given quadrants (`name_qK`), and `name` is their mean.

    `particles` P > 0 adds `mc_nelbo`, the P-particle Monte Carlo negative ELBO
    with q as proposal (Pyro's estimator), and, for grey completion targets,
    `entropy_floor`, their own entropy on the hidden pixels.
    """
    t0 = time.time()
    counts = counts_of(model)
    kw = dict(iw_samples=iw_samples, batch_size=batch_size, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
              gap_images=gap_images, gap_steps=gap_steps, particles=particles)  # fmt: skip
    parts = [_evaluate_at(model, x, y, quadrants=k, **kw) for k in counts]
    report = dict(parts[0])
    if counts != [None]:
        report["quadrants"] = counts[0] if len(counts) == 1 else 0
    if len(counts) > 1:
        for key, value in parts[0].items():
            if isinstance(value, float) and not key.endswith("_se"):
                values = [part[key] for part in parts]
                report[key] = sum(values) / len(values)
                if f"{key}_se" in parts[0]:  # the counts' errors as if independent (they share the images)
                    report[f"{key}_se"] = math.sqrt(sum(part[f"{key}_se"] ** 2 for part in parts)) / len(parts)
                for k, v in zip(counts, values, strict=True):
                    report[f"{key}_q{k}"] = v
    report["seconds"] = time.time() - t0
    return report


def _evaluate_at(
    model: CVAE, x: torch.Tensor, y: torch.Tensor, *, quadrants: int | None, iw_samples: int, batch_size: int,
    max_rows: int, amp_dtype: torch.dtype | None, seed: int, gap_images: int, gap_steps: int, particles: int,
) -> dict[str, float | int | str | None]:  # fmt: skip
    dims = int(x[0].numel()) if len(x) else 0
    gaussian = model.config.likelihood == "gaussian"
    binary = bool(((x == 0) | (x == 1)).all())
    discretize = gaussian and is_8bit(x)
    elbo = elbo_per_image(model, x, y, batch_size=batch_size, amp_dtype=amp_dtype, discretize=discretize, seed=seed,
                          quadrants=quadrants)  # fmt: skip
    nelbo, nelbo_se = mean_se(elbo.nelbo)
    report: dict[str, Any] = {
        "test_images": len(x),
        "dims": dims,
        "nelbo": nelbo,
        "nelbo_se": nelbo_se,
        "recon": float(elbo.recon.mean()) if len(x) else math.nan,
        "kl": float(elbo.kl.mean()) if len(x) else math.nan,
        "iw_samples": iw_samples,
        **_ledger_of([elbo]),
    }
    report["kl_alarm"] = alarm(report.get("kl_dims"), report.get("active_units"))
    iwae = None
    if iw_samples > 0:
        iwae = iwae_per_image(
            model, x, y, k=iw_samples, max_rows=max_rows, amp_dtype=amp_dtype, discretize=discretize, seed=seed,
            quadrants=quadrants,
        )  # fmt: skip
        report["iwae_nll"], report["iwae_nll_se"] = mean_se(-iwae.log_px)
        if quadrants is not None:  # the paper's second estimator: the same samples' count from the prior
            from_prior = iwae_per_image(model, x, y, k=iw_samples, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
                                        proposal="prior", quadrants=quadrants)  # fmt: skip
            report["prior_mc_nll"], report["prior_mc_nll_se"] = mean_se(-from_prior.log_px)
    if particles > 0:  # the mean of P log weights from q, not their log-mean-exp: Pyro's Trace_ELBO(num_particles=P)
        mc = iwae_per_image(model, x, y, k=particles, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
                            quadrants=quadrants)  # fmt: skip
        assert mc.mean_log_w is not None
        report["particles"] = particles
        report["mc_nelbo"], report["mc_nelbo_se"] = mean_se(-mc.mean_log_w)
        if quadrants is not None and not binary and not gaussian:
            report["entropy_floor"], report["entropy_floor_se"] = mean_se(entropy_floor(model, x, quadrants))
    if elbo.baseline is not None:
        report["baseline_nll"], report["baseline_nll_se"] = mean_se(elbo.baseline)
    if gap_images > 0:  # on the first gap_images images, in fp32: it fits q by gradient steps
        gap = inference_gap_per_image(model, x[:gap_images], y[:gap_images], steps=gap_steps, seed=seed,
                                      quadrants=quadrants)  # fmt: skip
        report["gap_images"], report["gap_steps"] = len(gap.amortized), gap_steps
        report["gap_nelbo_amortized"], report["gap_nelbo_amortized_se"] = mean_se(gap.amortized)
        report["gap_nelbo_optimized"], report["gap_nelbo_optimized_se"] = mean_se(gap.optimized)
        report["amortization_gap"], report["amortization_gap_se"] = mean_se(gap.amortized - gap.optimized)
    bits = dims * math.log(2) if dims else math.nan
    if gaussian and discretize:
        assert elbo.recon_discrete is not None
        report["nelbo_discrete"], report["nelbo_discrete_se"] = mean_se(elbo.recon_discrete + elbo.kl)
        report["recon_discrete"] = float(elbo.recon_discrete.mean())
        report["bpd_kind"] = "8-bit pixels, discretized Gaussian"
        report["bpd_elbo"] = report["nelbo_discrete"] / bits
        if iwae is not None and iwae.log_px_discrete is not None:
            report["iwae_nll_discrete"], report["iwae_nll_discrete_se"] = mean_se(-iwae.log_px_discrete)
            report["bpd_iwae"] = report["iwae_nll_discrete"] / bits
    elif gaussian:
        report["bpd_kind"] = "none: the test images are not 8-bit levels"
    elif not binary:
        report["bpd_kind"] = "none: grey targets scored by cross-entropy, not a likelihood of the pixels"
    else:
        report["bpd_kind"] = "binary pixels (not comparable with 8-bit bits/dim)"
        report["bpd_elbo"] = nelbo / bits
        if iwae is not None:
            report["bpd_iwae"] = report["iwae_nll"] / bits
    return report


def evaluate_checkpoint(
    path: Path | str,
    *,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    test_subset: int | None = None,
    batch_size: int = 1000,
    max_rows: int = MAX_ROWS,
    seed: int = EVAL_SEED,
    data_dir: str | None = None,
    precision: str = "fp32",
    device: str = "auto",
    data: object | None = None,
    gap_images: int = 0,
    gap_steps: int = DEFAULT_GAP_STEPS,
    protocol: str = "ours",
) -> dict:
    """Load a run folder or checkpoint and its test set; `evaluate_model` plus what was evaluated.

    `data` (an `ImageData` already loaded with the protocol's DataConfig: the
    run's own for "ours") skips reloading, e.g. when evaluating many
    checkpoints of one run. `protocol` "pyro" (digit-completion runs only)
    evaluates on grey test digits, whatever the run trained on, and adds
    Pyro's 10-particle negative ELBO (`mc_nelbo`) and the targets' entropy.
    """

    if not 0 <= iw_samples <= MAX_IW_SAMPLES:
        raise CVAEError(f"--iw-samples (-k) must be 0 (skip) to {MAX_IW_SAMPLES}, got {iw_samples}")
    if not 1 <= max_rows <= MAX_MAX_ROWS:
        raise CVAEError(f"--max-rows must be 1 to {MAX_MAX_ROWS}, got {max_rows}")
    if gap_images < 0 or gap_steps < 1:
        raise CVAEError(f"--gap-images must be 0 or more and --gap-steps positive, got {gap_images} and {gap_steps}")
    if test_subset is not None and test_subset < 1:
        raise CVAEError(f"--test-subset must be positive, got {test_subset}")
    if protocol not in PROTOCOLS:
        raise CVAEError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    dev = select_device(device)
    loaded = load_run(path, dev)
    model, config, info, payload = loaded.model, loaded.config, loaded.info, loaded.checkpoint
    if protocol != "ours" and config.model.condition != "quadrants":
        raise CVAEError(f"--protocol {protocol} measures digit completion; this run's condition is "
                        f"{config.model.condition}: use --protocol ours")  # fmt: skip
    data_config = config.data if data_dir is None else replace(config.data, data_dir=data_dir)
    if protocol == "pyro":  # Pyro's targets and inputs are the grey digits, never binarized
        data_config = replace(data_config, binarize="none")
    if not isinstance(data, ImageData):
        data = load_data(data_config)
        if data.info.to_dict() != info.to_dict():
            raise CVAEError("the test data differ in shape or classes from the data the checkpoint was trained on")
    x, y = data.test_x, data.test_y
    if test_subset:
        x, y = x[:test_subset], y[:test_subset]
    if len(x) == 0:
        raise CVAEError("the test set is empty")
    amp_dtype = select_amp_dtype(precision, dev)
    report = evaluate_model(
        model, x, y, iw_samples=iw_samples, batch_size=batch_size, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
        gap_images=gap_images, gap_steps=gap_steps, particles=PYRO_PARTICLES if protocol == "pyro" else 0,
    )  # fmt: skip
    head = {
        "checkpoint": str(path),
        "epoch": payload.get("epoch"),
        "dataset": info.name,
        "likelihood": config.model.likelihood + (" (learned sigma)" if config.model.learn_sigma else ""),
        "latent_dim": config.model.latent_dim,
        "condition": config.model.condition,
        "protocol": protocol,
        "binarization": data_config.binarize,
        "trained_binarization": config.data.binarize,
        "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
        "seed": seed,
    }
    return {**head, **report}


# ----------------------------------------------------------- command line


def format_report(r: dict) -> str:
    """A plain-text table of an `evaluate_checkpoint` report."""

    def num(key: str) -> str:
        value, se = r.get(key), r.get(f"{key}_se")
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        text = f"{value:.2f}"
        if isinstance(se, float) and math.isfinite(se):
            text += f" ± {se:.2f}"
        return text

    gaussian = str(r["likelihood"]).startswith("gaussian")
    unit = "nats (density on [0,1]^D)" if gaussian else "nats"
    binarization = r["binarization"]
    if r.get("trained_binarization", binarization) != binarization:
        binarization += f" (the run trained on {r['trained_binarization']})"
    rows = [
        ("checkpoint", f"{r['checkpoint']} (epoch {r['epoch']})"),
        ("data", f"{r['dataset']}, {r['test_images']} test images, D = {r['dims']}, binarization: {binarization}"),
        ("model", f"{r['likelihood']}, z = {r['latent_dim']}, {r['precision']}"),
        (f"negative ELBO [{unit}]", f"{num('nelbo')}  (recon {r['recon']:.2f} + KL {r['kl']:.2f}; 1 sample)"),
    ]
    completion = r.get("condition") == "quadrants"
    if completion:
        unit = "nats, hidden pixels"
        given = "1-3 (random per image; the mean of 1, 2 and 3)" if r.get("quadrants") == 0 else r.get("quadrants")
        rows[3] = (f"negative ELBO [{unit}]", f"{num('nelbo')}  (recon {r['recon']:.2f} + KL {r['kl']:.2f}; 1 sample)")
        rows.insert(3, ("given", f"{given} quadrant(s): -log p(y | x) of the hidden pixels y given the shown x"))
        rows.insert(4, ("protocol", PROTOCOL_WORDS[r.get("protocol", "ours")]))
    if isinstance(r.get("kl_dims"), list):
        dims = ", ".join(f"{v:.2f}" for v in r["kl_dims"])
        rows.append(("KL per dimension [nats]", f"{dims}  ({r.get('active_units')} of {len(r['kl_dims'])} active)"))
    if r.get("kl_alarm"):
        rows.append(("warning", r["kl_alarm"]))
    if r.get("iw_samples"):
        name = "importance sampling from q(z | x, y)" if completion else "IWAE NLL"
        rows.append((f"{name}, K = {r['iw_samples']} [{unit}]", num("iwae_nll")))
    if "prior_mc_nll" in r:
        rows.append((f"Monte Carlo from p(z | x), K = {r['iw_samples']} [{unit}]", num("prior_mc_nll")))
    if "mc_nelbo" in r:
        rows.append((f"Monte Carlo -ELBO, {r['particles']} particles from q [{unit}]", num("mc_nelbo")))
    if "entropy_floor" in r:
        rows.append((f"floor: the grey targets' own entropy [{unit}]", num("entropy_floor")))
    if "baseline_nll" in r:
        rows.append((f"deterministic baseline [{unit}]", num("baseline_nll")))
    for k in (1, 2, 3):
        if f"nelbo_q{k}" in r:
            parts = [f"-ELBO {r[f'nelbo_q{k}']:.2f}"] + [f"{label} {r[f'{key}_q{k}']:.2f}" for key, label in
                     (("iwae_nll", "IS"), ("prior_mc_nll", "MC"), ("mc_nelbo", "MC-ELBO"), ("baseline_nll", "baseline"),
                      ("entropy_floor", "floor")) if f"{key}_q{k}" in r]  # fmt: skip
            rows.append((f"  {k} quadrant(s) given", ", ".join(parts)))
    if "nelbo_discrete" in r:
        rows.append(("negative ELBO [nats, 8-bit]", f"{num('nelbo_discrete')}  (recon {r['recon_discrete']:.2f})"))
        if "iwae_nll_discrete" in r:
            rows.append((f"IWAE NLL, K = {r['iw_samples']} [nats, 8-bit]", num("iwae_nll_discrete")))
    if r.get("gap_images"):
        rows.append((
            f"inference gap, first {r['gap_images']} images [{unit}]",
            f"encoder's q {num('gap_nelbo_amortized')}, q fitted per image ({r['gap_steps']} steps) "
            f"{num('gap_nelbo_optimized')}: amortization gap {num('amortization_gap')}",
        ))  # fmt: skip
    if "bpd_elbo" in r:
        bpd = f"{r['bpd_elbo']:.4f} (ELBO)"
        if "bpd_iwae" in r:
            bpd += f", {r['bpd_iwae']:.4f} (IWAE)"
        rows.append(("bits/dim", f"{bpd}  [{r['bpd_kind']}]"))
    elif "bpd_kind" in r:
        rows.append(("bits/dim", r["bpd_kind"]))
    rows.append(("time", f"{r['seconds']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cli(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cvae.evaluate", description="Test-set likelihoods of a trained CVAE, in nats.")
    p.add_argument("checkpoint", help="a run folder or a checkpoint file")
    p.add_argument("--iw-samples", "-k", type=number(int, low_open=False), default=None,
                   help=f"importance samples K for the IWAE bound, at most {MAX_IW_SAMPLES}; 0 skips it; for a "
                        f"digit-completion run (condition quadrants), the samples S of its -log p(y | x), from q "
                        f"and from the prior; with --bounds, the largest K of the ladder [{DEFAULT_IW_SAMPLES}; "
                        f"with --bounds {BOUNDS_K}]")  # fmt: skip
    p.add_argument("--test-subset", type=number(int), default=None, help="evaluate the first N test images only")
    p.add_argument("--batch-size", type=number(int), default=1000, help="images per ELBO batch [1000]")
    p.add_argument("--max-rows", type=number(int), default=MAX_ROWS,
                   help=f"IWAE: images x samples per decoder pass, bounds memory; at most {MAX_MAX_ROWS} "
                        f"[{MAX_ROWS}]")  # fmt: skip
    p.add_argument(
        "--seed", type=number(int, low_open=False), default=EVAL_SEED, help=f"seed of the z noise [{EVAL_SEED}]"
    )
    p.add_argument("--data-dir", default=None, help="folder with MNIST/raw and cifar-10-batches-py [the run's]")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="[fp32]")
    # auto picks the device the way the trainer does (cvae.runtime.select_device), so the default
    # reproduces the trainer's per-epoch test figures wherever both run
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps [auto: as the trainer]")
    p.add_argument("--gap-images", type=number(int, low_open=False), default=0,
                   help="also fit a Gaussian q to each of the first N test images and report how much the "
                        "encoder loses (the amortization gap); 0 skips it [0]")  # fmt: skip
    p.add_argument("--gap-steps", type=number(int), default=DEFAULT_GAP_STEPS,
                   help=f"Adam steps when fitting q for --gap-images [{DEFAULT_GAP_STEPS}]")  # fmt: skip
    p.add_argument("--protocol", choices=PROTOCOLS, default="ours",
                   help="digit-completion runs: ours (the run's own data; -log p(y | x) by importance sampling) or "
                        f"pyro (as Pyro's CVAE tutorial measures: grey targets, hidden pixels, its "
                        f"{PYRO_PARTICLES}-particle -ELBO from q) [ours]")  # fmt: skip
    p.add_argument("--bounds", action="store_true",
                   help=f"the bounds ladder and its two gaps (cvae.bounds): -ELBO with the encoder's q and with q "
                        f"fitted per image, IWAE at K = 1, 10, ... -k, on the first --test-subset images "
                        f"[{BOUNDS_IMAGES}], kept in the run folder's bounds.json")  # fmt: skip
    p.add_argument("--nice", type=int, default=0, help="--bounds: lower this process's CPU priority by N (0-19) [0]")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.bounds:
        return cli_bounds(args, p)
    iw_samples = DEFAULT_IW_SAMPLES if args.iw_samples is None else args.iw_samples
    try:
        report = evaluate_checkpoint(
            args.checkpoint, iw_samples=iw_samples, test_subset=args.test_subset, batch_size=args.batch_size,
            max_rows=args.max_rows, seed=args.seed, data_dir=args.data_dir, precision=args.precision,
            device=args.device, gap_images=args.gap_images, gap_steps=args.gap_steps, protocol=args.protocol,
        )  # fmt: skip
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(clean_json(report), indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
