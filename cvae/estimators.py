"""The per-image estimators behind every likelihood figure, in nats, as float64: the negative ELBO, the
importance-weighted bound and the inference gap, and the discretized Gaussian that scores 8-bit pixels.

`cvae.evaluate` (the test-set report and its command line) and `cvae.bounds` (the bounds ladder) both
measure with these, so their figures agree to the last digit for the same seed and images; this module
imports neither of them.

- negative ELBO = -log p(x | z, y) + KL(q(z | x, y) || p(z)), one z ~ q
  (Kingma & Welling 2014); the KL is analytic.
- IWAE (Burda, Grosse & Salakhutdinov 2016, eq. 8): with K samples
  z_k ~ q(z | x, y) and log weights log w_k = log p(x | z_k, y) + log p(z_k)
  - log q(z_k | x, y), the bound log p(x | y) >= E[logsumexp_k log w_k - log K].
  It equals the ELBO at K = 1 and tightens monotonically (in expectation) to
  log p(x | y) as K grows.
- K-particle Monte Carlo ELBO: the same K log weights averaged instead of
  log-mean-exp'd, (1/K) sum_k log w_k, its KL sampled rather than analytic:
  what Pyro's `Trace_ELBO(num_particles=K)` computes with q as the guide. Its
  expectation is the ELBO whatever K; K only lowers its noise.
- inference gap: the negative ELBO with the encoder's q and with a Gaussian q
  fitted to each image, the model fixed (Cremer, Li & Duvenaud 2018).

A Gaussian decoder's density on [0, 1] is not a probability of the stored
8-bit pixels, so for those it is discretized. A pixel value v in {0..255} is
stored as x = v / 255; its bin is [x - 1/510, x + 1/510], with the first bin
extended to -inf and the last to +inf, so the 256 bin probabilities sum to 1
exactly. P(v | z, y) = Phi((upper - mean) / std) - Phi((lower - mean) / std),
computed in float64 as a difference of log-CDFs in the lower tail
(`discretized_gaussian_log_prob`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch.optim.adam import adam

from cvae.errors import CVAEError
from cvae.ledger import ledger
from cvae.likelihoods import HALF_LOG_2PI, DiagonalGaussian, standard_normal_log_prob
from cvae.model import CVAE, STD_FLOOR, Condition
from cvae.runtime import autocast

EVAL_SEED = 1234  # the noise of z ~ q is fixed, so the same weights give the same numbers
DEFAULT_IW_SAMPLES = 100  # a tight bound at a cost of K decoder passes per image (docs/benchmark.md times it)
DEFAULT_GAP_STEPS = 300  # Adam steps per image batch when fitting q for the inference gap
GAP_CHUNK = 32  # z draws per decoder pass when estimating the two ELBOs of the inference gap
MAX_ROWS = 1024  # decoder rows (images x samples) per forward pass: bounds memory
# The largest K accepted: the bound's gain from 1,000 to 5,000 samples is a fraction of a nat, while the
# time grows linearly with K (a conv model on a CPU: tens of minutes for the test set at K = 5,000).
# Memory does not grow with K: samples go through in chunks.
MAX_IW_SAMPLES = 5000
MAX_MAX_ROWS = 8192  # --max-rows above this would let one decoder pass take gigabytes
PROPOSALS = ("posterior", "prior")
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


# ---------------------------------------------------------- inference gap


class InferenceGapPerImage(NamedTuple):
    """Negative ELBOs per image, nats, float64, (N,), both with the same `samples` draws of z."""

    amortized: torch.Tensor  # q from the encoder
    optimized: torch.Tensor  # q = N(mu, std^2) fitted to this one image, starting from the encoder's
    fitted: DiagonalGaussian | None = None  # that q's mu and std, (N, Z), float32


class PlainAdam:
    """`torch.optim.Adam(tensors, lr=lr)`'s steps, number for number, for a few tensors that are not a model's
    parameters (a posterior's mean and scale fitted per image): the same state, and torch's own functional
    `adam`, which the optimizer's `step` calls. `step` takes the gradients (`.grad` is None after it).

    Written out because `torch.optim.Adam.step` imports torch's compiler at its first call (a graph break for
    it), a second of a 2-core machine's time at the end of every run whose test ELBO is refined."""

    def __init__(self, tensors: Sequence[torch.Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:  # fmt: skip
        self.tensors, self.lr, self.betas, self.eps = list(tensors), lr, betas, eps
        self.exp_avgs = [torch.zeros_like(t, memory_format=torch.preserve_format) for t in self.tensors]
        self.exp_avg_sqs = [torch.zeros_like(t, memory_format=torch.preserve_format) for t in self.tensors]
        self.steps = [torch.tensor(0.0, dtype=torch.float32) for _ in self.tensors]  # as Adam keeps them uncaptured

    @torch.no_grad()
    def step(self) -> None:
        live = [k for k, t in enumerate(self.tensors) if t.grad is not None]
        grads = [self.tensors[k].grad for k in live]
        for k in live:
            self.tensors[k].grad = None
        adam([self.tensors[k] for k in live], grads, [self.exp_avgs[k] for k in live], [self.exp_avg_sqs[k] for k in live],
             [], [self.steps[k] for k in live], amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
             weight_decay=0.0, eps=self.eps, maximize=False)  # fmt: skip


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
                opt = PlainAdam([mu, raw], lr=lr)
                for step in range(steps):
                    eps = torch.randn(train_samples, *mu.shape, device=device)
                    loss = nelbo(mu, torch.nn.functional.softplus(raw) + STD_FLOOR, xb, cond, prior, eps)
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


REFINE_LR = 0.05  # Adam's rate when refining q for the refined test ELBO (refined_nelbo)


# ------------------------------------------------------------------- ELBO


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
    out.update(ledger_of(seen))
    return out


def ledger_of(parts: Sequence[ElboPerImage]) -> dict[str, Any]:
    """cvae.ledger's figures over every image of every given-quadrant count evaluated."""
    if any(p.kl_dims is None or p.mu is None for p in parts):
        return {}
    return ledger(torch.cat([p.kl_dims for p in parts]), torch.cat([p.mu for p in parts]))  # type: ignore[misc]


# ---------------------------------------------------------- inference gap


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
    batch = 5000 if next(model.parameters()).device.type == "cuda" and model.config.arch == "mlp" else 1000
    gap = inference_gap_per_image(model, x, y, steps=steps, lr=lr, train_samples=1, samples=1, batch_size=batch,
                                  quadrants=quadrants)  # fmt: skip
    return float(gap.optimized.mean())
