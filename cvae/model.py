"""One conditional VAE family (Sohn, Lee & Yan 2015): recognition q(z | x, c), prior p(z | c), generation p(x | z, c).

The condition c is what the model is given besides z (`ModelConfig.condition`):

- label: the class as a one-hot vector (the reference). Every pixel is scored.
- none: nothing (a plain VAE; c has width 0 and the label passed in is ignored).
- quadrants: the given part of the image (the paper's digit completion): the
  image with its hidden pixels at 0, flattened, plus (with `mask_channel`) the
  0/1 mask of the given pixels. Only the hidden pixels are scored, and the
  recognition network sees only them (`x * scored`), so a given pixel can
  neither be predicted nor leak.

The prior is N(0, I) (`prior="standard"`) or a Gaussian from a network of c
(`prior="conditional"`, the paper's prior network). The model owns its
objective (`objective`): the negative ELBO, optionally the paper's hybrid with
the GSNN loss (`alpha`), plus the deterministic baseline p(x | c) (`baseline`),
trained on the same batch and sharing no parameter with the CVAE.

Architectures, both built from a `ModelConfig` alone:

- conv: the reference's layers (REFERENCE.md). The label conditions the
  encoder the reference's way: the one-hot vector is appended to every image
  row as `num_classes` extra columns, (B, C, H, W) -> (B, C, H, W + K), so the
  layer sizes and parameter count match it (15.0 M for MNIST at z = 2). The
  decoder gets [z, one-hot].
- mlp: fully connected networks; the encoder gets [flattened x, c], the
  decoder [z, c], the prior network and the baseline c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cvae.config import ModelConfig
from cvae.errors import ConfigError
from cvae.layers import Conv2d, ConvTranspose2d, Linear
from cvae.likelihoods import DiagonalGaussian, Likelihood

STD_FLOOR = 1e-6  # std = softplus(.) + floor, for every Gaussian over z (the reference's)
QUADRANT_ORDER = ("bottom-left", "top-left", "top-right", "bottom-right")  # the order quadrants are given in


class Condition(NamedTuple):
    """What the networks are given besides z, for one batch."""

    code: torch.Tensor  # c: (B, condition_width)
    scored: torch.Tensor | None  # (B, 1, H, W) 0/1: the pixels that count; None = all of them
    dense: bool = False  # c is pixels, not a one-hot label: its share of a first layer is worth computing once


class CVAEOutput(NamedTuple):
    out: torch.Tensor  # raw decoder output (B, C * k, H, W); see Likelihood
    mu: torch.Tensor  # (B, Z)
    std: torch.Tensor  # (B, Z)
    z: torch.Tensor  # (B, Z), one sample from q(z | x, c)


@dataclass
class Objective:
    """The model's terms for one batch, per image in nats, (B,); `loss` is what training minimises.

    `terms()` names what the loop sums and logs: the negative ELBO and its two
    parts, then the baseline's -log p(x | c) and the GSNN loss where the model has them.
    """

    recon: torch.Tensor  # -log p(x | z, c), z ~ q(z | x, c)
    kl: torch.Tensor  # KL(q(z | x, c) || p(z | c))
    posterior: DiagonalGaussian
    prior: DiagonalGaussian | None  # None = N(0, I)
    out: torch.Tensor  # the decoder's raw output for z
    condition: Condition
    alpha: float = 1.0
    gsnn: torch.Tensor | None = None  # -log p(x | z, c), z ~ p(z | c); only when alpha < 1
    baseline: torch.Tensor | None = None  # the deterministic baseline's -log p(x | c)
    kl_weight: torch.Tensor | None = None  # beta (its warm-up's value now); None = the ELBO's own KL, weight 1
    free_bits: float = 0.0  # lambda: each dimension's batch-mean KL is charged at least this

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl

    @property
    def trained(self) -> torch.Tensor:
        """Per image, what training minimises: alpha * (-ELBO) + (1 - alpha) * GSNN, with the KL shaped by beta
        and free bits where the model has them. Free bits charge each dimension's KL averaged over the batch,
        so that charge is the batch's, the same for each of its images."""
        nelbo = self.nelbo
        if self.kl_weight is not None:
            charge = self.kl
            if self.free_bits:
                kl_dims = self.posterior.kl_dims(self.prior).mean(0)
                charge = kl_dims.clamp(min=self.free_bits).sum().expand_as(self.kl)
            nelbo = self.recon + self.kl_weight * charge
        return nelbo if self.gsnn is None else self.alpha * nelbo + (1 - self.alpha) * self.gsnn

    @property
    def loss(self) -> torch.Tensor:
        """Batch mean of `trained` (+ the baseline's NLL: it shares no parameter, so one backward pass trains
        both and changes neither's gradients)."""
        return (self.trained if self.baseline is None else self.trained + self.baseline).mean()

    def terms(self) -> dict[str, torch.Tensor]:
        named = {"nelbo": self.nelbo, "recon": self.recon, "kl": self.kl}
        if self.baseline is not None:
            named["baseline_nll"] = self.baseline
        if self.gsnn is not None:
            named["gsnn"] = self.gsnn
        if self.kl_weight is not None:  # the shaped objective, under its own name beside the true bound
            named["objective"] = self.trained
        return named


def term_names(config: ModelConfig) -> tuple[str, ...]:
    """The names of `Objective.terms()` for a model of this config, in order."""
    return ("nelbo", "recon", "kl") + (("baseline_nll",) if config.baseline else ()) + \
        (("gsnn",) if config.alpha < 1 else ()) + (("objective",) if config.shaped_kl else ())  # fmt: skip


def _conv_out(n: int) -> int:
    return (n + 2 * 1 - 4) // 2 + 1  # 4x4 kernel, stride 2, padding 1


class _ToNCHW(torch.autograd.Function):
    """x.contiguous() whose backward hands the gradient back in x's own layout (channels_last, on a CPU)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = (
            x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        )
        return x.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


class NCHWFlatten(nn.Flatten):
    """Flatten for the conv encoder: on a CPU the convolutions run channels_last, while the linear layer after
    them reads (N, C, H, W) order. A plain Flatten copies in the forward pass but hands its gradient back
    contiguous, so the activation and batch norm before it walk a channels_last input beside a contiguous
    gradient, element by element, several times slower than the one copy back that is made here. The same
    values either way; no parameters, so checkpoints do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_ToNCHW.apply(x))


class ConvEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, h, w = config.channels, config.height, config.width + config.label_width
        for i, c_out in enumerate(config.enc_channels):
            layers.append(Conv2d(c_in, c_out, 4, 2, 1))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
            c_in, h, w = c_out, _conv_out(h), _conv_out(w)
        layers.append(NCHWFlatten())
        features = c_in * h * w
        for width in config.enc_hidden:
            layers += [Linear(features, width), nn.BatchNorm1d(width), nn.LeakyReLU(0.2)]
            features = width
        layers.append(Linear(features, 2 * config.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, ch, h, _ = x.shape
        rows = c[:, None, None, :].expand(b, ch, h, c.shape[1])  # (B, C, H, K): one-hot on every row
        return self.net(torch.cat([x, rows.to(x.dtype)], dim=3))  # (B, 2Z)


class ConvDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        ups = len(config.dec_channels) + 1
        self.start = (config.dec_start_channels, config.height >> ups, config.width >> ups)
        layers: list[nn.Module] = []
        features = config.latent_dim + config.label_width
        for width in config.dec_hidden:
            layers += [Linear(features, width), nn.BatchNorm1d(width), nn.ReLU()]
            features = width
        n_start = self.start[0] * self.start[1] * self.start[2]
        layers += [Linear(features, n_start), nn.BatchNorm1d(n_start), nn.ReLU(), nn.Unflatten(1, self.start)]
        c_in = config.dec_start_channels
        for i, c_out in enumerate(config.dec_channels):
            layers.append(ConvTranspose2d(c_in, c_out, 4, 2, 1))
            if i == 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
            c_in = c_out
        layers.append(ConvTranspose2d(c_in, config.out_channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        return self.net(zc)  # (B, C * k, H, W)


MLP_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh,
}  # fmt: skip


def _mlp_block(config: ModelConfig, features: int, width: int) -> list[nn.Module]:
    """Linear, then the configured normalisation (if any), then the activation."""
    norm: list[nn.Module] = {"none": [], "batch": [nn.BatchNorm1d(width)], "layer": [nn.LayerNorm(width)]}[
        config.mlp_norm
    ]
    return [Linear(features, width), *norm, MLP_ACTIVATIONS[config.mlp_activation]()]


class GaussianMLP(nn.Module):
    """inputs -> MLP -> (B, 2Z): the mean and raw std of a Gaussian over z. The MLP encoder (inputs
    [flattened x, c]) and the prior network (inputs c)."""

    def __init__(self, config: ModelConfig, features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in config.mlp_hidden:
            layers += _mlp_block(config, features, width)
            features = width
        layers.append(Linear(features, 2 * config.latent_dim))
        self.net = nn.Sequential(*layers)


class MLPEncoder(GaussianMLP):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, config.channels * config.height * config.width + config.condition_width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), c.to(x.dtype)], dim=1))


class PriorNet(GaussianMLP):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, config.condition_width)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c)


class MLPDecoder(nn.Module):
    """[z, c] -> the decoder's raw output; `latent_dim` 0 makes the deterministic baseline p(x | c)."""

    def __init__(self, config: ModelConfig, latent_dim: int | None = None) -> None:
        super().__init__()
        self.latent_dim = config.latent_dim if latent_dim is None else latent_dim
        features = self.latent_dim + config.condition_width
        layers: list[nn.Module] = []
        for width in reversed(config.mlp_hidden):
            layers += _mlp_block(config, features, width)
            features = width
        shape = (config.out_channels, config.height, config.width)
        layers += [Linear(features, shape[0] * shape[1] * shape[2]), nn.Unflatten(1, shape)]
        self.net = nn.Sequential(*layers)

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        return self.net(zc)

    def forward_samples(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """z (S, B, Z), c (B, D) -> (S * B, C * k, H, W), c's part of the first layer computed once.

        The first layer is linear in [z, c], so W [z, c] + b = W_z z + (W_c c + b): with a wide c
        (the given pixels) that is S times fewer multiplications for an importance sampler."""
        first = self.net[0]
        assert isinstance(first, nn.Linear)
        s, b, zdim = z.shape
        from_c = F.linear(c, first.weight[:, zdim:], first.bias)  # (B, H0)
        h = (F.linear(z, first.weight[:, :zdim]) + from_c).reshape(s * b, -1)  # (S * B, H0)
        return self.net[1:](h)


class CVAE(nn.Module):
    """q(z | x, c) = N(mu, std^2); p(z | c) = N(0, I) or a network of c; p(x | z, c) from `Likelihood`."""

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
        self.prior_net = PriorNet(config) if config.prior == "conditional" else None
        self.baseline = MLPDecoder(config, latent_dim=0) if config.baseline else None
        if config.condition == "quadrants":  # (3, C*H*W): the given pixels for 1, 2 and 3 quadrants
            self.register_buffer("quadrant_masks", quadrant_masks(config), persistent=False)
        if config.shaped_kl:  # the KL's weight now: a warm-up changes it in place (a CUDA graph reads this memory)
            self.register_buffer("kl_weight", torch.tensor(config.kl_weight), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal weights and zero biases, as the reference."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- the condition

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K) one-hot codes of the labels; (B, 0) where the networks never see the class."""
        return F.one_hot(labels, self.config.num_classes).float()[:, : self.config.label_width]

    def condition(self, x: torch.Tensor | None, labels: torch.Tensor | None,
                  quadrants: int | torch.Tensor | None = None) -> Condition:  # fmt: skip
        """c for a batch. Label and none: from `labels` alone (x may be None). Quadrants: from x (B, C, H, W)
        and `quadrants` given, an int or a (B,) tensor of counts in 1-3; None = as trained (the fixed
        count, or a random count per image drawn here)."""
        cfg = self.config
        if cfg.condition != "quadrants":
            if labels is None:
                raise ConfigError("this model is conditioned on the label: give the labels")
            return Condition(self.one_hot(labels), None)
        if x is None:
            raise ConfigError("a digit-completion model is conditioned on the given part of the image: give x")
        b = len(x)
        if quadrants is None and cfg.quadrants:
            quadrants = cfg.quadrants
        if quadrants is None:
            counts = torch.randint(1, 4, (b,), device=x.device)
        elif isinstance(quadrants, torch.Tensor):
            counts = quadrants.to(x.device).long()
        else:
            if isinstance(quadrants, bool) or quadrants not in (1, 2, 3):
                raise ConfigError(f"the number of given quadrants must be 1, 2 or 3, got {quadrants!r}")
            counts = torch.full((b,), quadrants, device=x.device, dtype=torch.long)
        if cfg.quadrants and counts.numel() and bool((counts != cfg.quadrants).any()):
            raise ConfigError(f"this model was trained with {cfg.quadrants} given quadrant(s) only")
        given = self.quadrant_masks[counts - 1].to(x.dtype)  # (B, C*H*W)
        shown = x.flatten(1) * given
        code = torch.cat([shown, given], 1) if cfg.mask_channel else shown
        return Condition(code, (1.0 - given).view_as(x), dense=True)

    def _as_condition(self, c: Condition | torch.Tensor) -> Condition:
        """A Condition, or labels (label and none conditions) turned into one."""
        return c if isinstance(c, Condition) else self.condition(None, c)

    # ---------------------------------------------------------------- the networks

    def _gaussian(self, h: torch.Tensor) -> DiagonalGaussian:
        mu, raw = h.float().chunk(2, dim=-1)
        return DiagonalGaussian(mu, F.softplus(raw) + STD_FLOOR)

    def encode(self, x: torch.Tensor, c: Condition | torch.Tensor) -> DiagonalGaussian:
        """q(z | x, c). `c`: a Condition, or the labels for the label and none conditions."""
        cond = self._as_condition(c)
        seen = x if cond.scored is None else x * cond.scored  # a condition's given pixels are not x's to encode
        return self._gaussian(self.encoder(seen, cond.code))

    def prior(self, c: Condition | torch.Tensor) -> DiagonalGaussian | None:
        """p(z | c); None = N(0, I)."""
        if self.prior_net is None:
            return None
        return self._gaussian(self.prior_net(self._as_condition(c).code))

    def decode(self, z: torch.Tensor, c: Condition | torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (B, C * k, H, W) for codes z (B, Z)."""
        code = self._as_condition(c).code
        return self.decoder(torch.cat([z, code.to(z.dtype)], dim=1))

    def decode_samples(self, z: torch.Tensor, c: Condition) -> torch.Tensor:
        """Raw outputs (S * B, C * k, H, W) for S codes per image, z (S, B, Z), sample-major."""
        s, b, _ = z.shape
        if c.dense and isinstance(self.decoder, MLPDecoder):
            return self.decoder.forward_samples(z, c.code.to(z.dtype))
        code = c.code.expand(s, *c.code.shape).reshape(s * b, -1)
        return self.decode(z.reshape(s * b, -1), Condition(code, None))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> CVAEOutput:
        cond = self.condition(x, labels)
        q = self.encode(x, cond)
        z = q.sample()  # reparameterisation
        return CVAEOutput(self.decode(z, cond), q.mu, q.std, z)

    # ---------------------------------------------------------------- the objective

    def objective(self, x: torch.Tensor, labels: torch.Tensor,
                  quadrants: int | torch.Tensor | None = None) -> Objective:  # fmt: skip
        """One-sample estimate of every term, per image, in nats (the loop, the graph step and the
        evaluator all call this; they only sum and log what it returns)."""
        cond = self.condition(x, labels, quadrants)
        q = self.encode(x, cond)
        z = q.sample()
        out = self.decode(z, cond)
        p = self.prior(cond)
        cfg = self.config
        terms = Objective(self.likelihood.nll(out, x, cond.scored), q.kl(p), q, p, out, cond, cfg.alpha,
                          kl_weight=self.kl_weight if cfg.shaped_kl else None, free_bits=cfg.free_bits)  # fmt: skip
        if self.config.alpha < 1:  # the GSNN term (Sohn et al. 2015, eq. 7, one sample): z from the prior
            z_prior = p.sample() if p is not None else torch.randn_like(z)
            terms.gsnn = self.likelihood.nll(self.decode(z_prior, cond), x, cond.scored)
        if self.baseline is not None:
            terms.baseline = self.likelihood.nll(self.baseline(cond.code), x, cond.scored)
        return terms

    @torch.no_grad()
    def generate(self, z: torch.Tensor, c: Condition | torch.Tensor) -> torch.Tensor:
        """Mean images E[x | z, c], (B, C, H, W) in [0, 1]."""
        return self.likelihood.mean(self.decode(z, c).float())


def quadrant_masks(config: ModelConfig) -> torch.Tensor:
    """(3, C*H*W) float: 1 where a pixel is given with 1, 2 and 3 quadrants (QUADRANT_ORDER)."""
    h, w = config.height // 2, config.width // 2
    where = {
        "bottom-left": (slice(h, None), slice(None, w)),
        "top-left": (slice(None, h), slice(None, w)),
        "top-right": (slice(None, h), slice(w, None)),
    }
    masks = torch.zeros(3, config.channels, config.height, config.width)
    for k in (1, 2, 3):
        for name in QUADRANT_ORDER[:k]:
            masks[(k - 1, slice(None), *where[name])] = 1.0
    return masks.flatten(1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
