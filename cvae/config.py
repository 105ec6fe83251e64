"""Typed configuration: what a run is, in three parts, and how it is checked.

`RunConfig` = `DataConfig` (what to train on) + `ModelConfig` (the network,
whose shapes come from the data layer's `DatasetInfo`, never from a dataset
name) + `TrainConfig` (the optimisation). It round-trips through plain JSON so
that a run folder and a checkpoint can hold it, and every value is validated
once, here, with a one-line message for the user.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from cvae.errors import ConfigError

Arch = Literal["conv", "mlp"]
Likelihood = Literal["bernoulli", "gaussian"]
Binarize = Literal["static", "dynamic", "none"]
Precision = Literal["auto", "fp32", "bf16"]

ARCHS = ("conv", "mlp")
LIKELIHOODS = ("bernoulli", "gaussian")
BINARIZE = ("static", "dynamic", "none")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("exponential", "cosine")
MLP_ACTIVATIONS = ("relu", "silu", "gelu", "elu", "tanh")
MLP_NORMS = ("none", "batch", "layer")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which images, where they live, and how they are prepared."""

    dataset: str = "MNIST"  # MNIST, CIFAR10, or a path to an image folder
    data_dir: str = ""  # "" = the project's data/ folder (or $CVAE_DATA_DIR)
    binarize: Binarize = "none"  # Bernoulli decoders: static (reference) or dynamic
    image_size: int | None = None  # image folders: resize to this (default: first image)
    train_subset: int | None = None  # use only the first N training images
    test_subset: int | None = None  # use only the first N test images
    test_fraction: float = 0.1  # image folders without train/ and test/: held-out share
    split_seed: int = 0  # ... split with this fixed seed

    def validate(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ConfigError("dataset must be MNIST, CIFAR10 or a path to an image folder")
        _choice("binarize", self.binarize, BINARIZE)
        for name in ("image_size", "train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
        if self.image_size is not None and self.image_size > 512:
            raise ConfigError(f"image_size must be at most 512, got {self.image_size}")
        if not (0 < self.test_fraction < 1):
            raise ConfigError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network. Shapes (channels, height, width, classes) come from the data."""

    channels: int
    height: int
    width: int
    num_classes: int
    latent_dim: int = 10
    arch: Arch = "conv"
    likelihood: Likelihood = "bernoulli"
    learn_sigma: bool = False  # Gaussian only: decoder also outputs a per-pixel std
    fixed_sigma: float = 1.0  # Gaussian with fixed sigma: the std of p(x|z,y)
    sigma_min: float = 1e-3  # floor on learned stds (softplus + floor), for stability
    # conv architecture (the reference's layers; see `conv_preset`)
    enc_channels: tuple[int, ...] = (64, 128)
    enc_hidden: tuple[int, ...] = (1024,)
    dec_hidden: tuple[int, ...] = (1024,)
    dec_start_channels: int = 128
    dec_channels: tuple[int, ...] = (64,)
    # mlp architecture
    mlp_hidden: tuple[int, ...] = (512, 512)
    mlp_activation: str = "relu"  # relu, silu, gelu, elu or tanh, between the MLP's layers
    mlp_norm: str = "none"  # none, batch or layer: normalisation after each hidden linear layer

    def validate(self) -> None:
        for name in ("channels", "height", "width", "num_classes", "latent_dim"):
            _positive_int(name, getattr(self, name))
        if self.num_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {self.num_classes}")
        if self.latent_dim > 1024:
            raise ConfigError(f"latent_dim must be at most 1024, got {self.latent_dim}")
        _choice("arch", self.arch, ARCHS)
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        if not isinstance(self.learn_sigma, bool):
            raise ConfigError(f"learn_sigma must be true or false, got {self.learn_sigma!r}")
        _positive_float("fixed_sigma", self.fixed_sigma)
        _positive_float("sigma_min", self.sigma_min)
        if self.likelihood == "bernoulli" and self.learn_sigma:
            raise ConfigError("learned sigma needs the Gaussian decoder (-t Gaussian)")
        if self.likelihood == "bernoulli" and self.channels != 1:
            raise ConfigError(
                f"the Bernoulli decoder models binary (black and white) images; this data has "
                f"{self.channels} channels: use -t Gaussian"
            )
        for name in ("enc_channels", "enc_hidden", "dec_hidden", "dec_channels", "mlp_hidden"):
            for width in getattr(self, name):
                _positive_int(name, width)
        _positive_int("dec_start_channels", self.dec_start_channels)
        _choice("mlp_activation", self.mlp_activation, MLP_ACTIVATIONS)
        _choice("mlp_norm", self.mlp_norm, MLP_NORMS)
        if self.arch == "conv":
            stages = len(self.enc_channels)
            if not stages or not self.dec_channels:
                raise ConfigError("the conv architecture needs at least one conv layer each way")
            down = 2 ** (len(self.dec_channels) + 1)
            if self.height % down or self.width % down:
                raise ConfigError(
                    f"the conv architecture needs image sides divisible by {down}, got "
                    f"{self.height}x{self.width}: resize (--image-size) or use --arch mlp"
                )

    @property
    def out_channels(self) -> int:
        """Decoder output channels: one set of parameters per pixel, two with learned sigma."""
        return self.channels * (2 if self.learn_sigma else 1)


def conv_preset(height: int, width: int) -> dict[str, Any]:
    """The reference's conv layer widths for an image of this size.

    28x28-like images (sides divisible by 4) get the reference's MNIST layers:
    two stride-2 convs and a 1024-wide hidden layer each way. Images of 32 px
    or more with sides divisible by 16 get its CIFAR layers: three convs down,
    a 448-channel 2x2 start and four deconvs up. The choice depends on shape
    alone, so a user's own images get whichever fits.
    """
    if min(height, width) >= 32 and height % 16 == 0 and width % 16 == 0:
        return dict(
            enc_channels=(64, 128, 256),
            enc_hidden=(),
            dec_hidden=(),
            dec_start_channels=448,
            dec_channels=(256, 128, 64),
        )
    if height % 4 == 0 and width % 4 == 0:
        return dict(
            enc_channels=(64, 128),
            enc_hidden=(1024,),
            dec_hidden=(1024,),
            dec_start_channels=128,
            dec_channels=(64,),
        )
    raise ConfigError(
        f"the conv architecture needs image sides divisible by 4, got {height}x{width}: "
        "resize the images (--image-size 28 or 32) or use --arch mlp"
    )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping. Defaults are the reference's command line."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-4
    seed: int = 0
    device: str = "auto"  # auto = cuda, then mps, then cpu
    precision: Precision = "auto"  # auto = bf16 autocast where it is fast and safe
    print_every: int = 1  # log the batch loss every N batches
    checkpoint_every: int = 20  # keep a numbered checkpoint every N epochs
    plateau_patience: int = 5  # ReduceLROnPlateau on the epoch's mean training loss
    latent_subset: int = 2000  # test images whose latent means are saved each epoch
    grid_size: int = 64  # the fixed test batch shown as reconstructions
    threads: int = 0  # torch CPU threads; 0 = one per available core
    lr_decay: float = 1.0  # exponential schedule: the learning rate is multiplied by this after every epoch
    # exponential: lr_decay after every epoch, and a plateau cut; cosine: linear warm-up over
    # warmup_epochs, then a half cosine down to 0 at the end of the run's epochs
    lr_schedule: str = "exponential"
    warmup_epochs: float = 0.0
    # after the last epoch, also the test ELBO with q refined per image by this many
    # gradient steps (cvae.evaluate.refined_nelbo); 0 = not measured
    refine_steps: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "print_every", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        for name in ("plateau_patience", "latent_subset", "grid_size", "threads", "seed", "refine_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        _positive_float("learning_rate", self.learning_rate)
        _positive_float("lr_decay", self.lr_decay)
        if self.lr_decay > 1:
            raise ConfigError(f"lr_decay must be at most 1, got {self.lr_decay}")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        warmup = self.warmup_epochs
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup <= 1000:
            raise ConfigError(f"warmup_epochs must be a number from 0 to 1000, got {warmup!r}")
        if warmup and self.lr_schedule != "cosine":
            raise ConfigError("warmup_epochs needs lr_schedule cosine")
        if self.lr_schedule == "cosine" and self.lr_decay != 1:
            raise ConfigError("lr_decay belongs to the exponential schedule; the cosine schedule sets the decay itself")
        if self.learning_rate > 1:
            raise ConfigError(f"learning_rate must be at most 1, got {self.learning_rate}")
        if self.refine_steps > 10_000:
            raise ConfigError(f"refine_steps must be at most 10000, got {self.refine_steps}")
        if self.epochs > 100_000:
            raise ConfigError(f"epochs must be at most 100000, got {self.epochs}")
        if self.batch_size > 65_536:
            raise ConfigError(f"batch_size must be at most 65536, got {self.batch_size}")
        _choice("precision", self.precision, PRECISIONS)
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything needed to rebuild a run: data, model and training."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        self.data.validate()
        self.model.validate()
        self.train.validate()
        if self.model.likelihood == "bernoulli" and self.data.binarize == "none":
            raise ConfigError("the Bernoulli decoder needs binarized images (static or dynamic)")
        if self.model.likelihood == "gaussian" and self.data.binarize != "none":
            raise ConfigError("the Gaussian decoder models grey levels: binarize must be none")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunConfig:
        """Rebuild from JSON-like data, refusing unknown or ill-typed keys."""
        if not isinstance(raw, dict) or "model" not in raw:
            raise ConfigError("not a cvae run config (expected data, model and train sections)")
        parts = {}
        for name, kind in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            section = raw.get(name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"config section {name!r} must be a mapping")
            known = {f.name: f for f in fields(kind)}
            unknown = sorted(set(section) - set(known))
            if unknown:
                raise ConfigError(f"unknown {name} option(s) in config: {', '.join(unknown)}")
            # JSON turns tuples into lists; turn them back.
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
            try:
                parts[name] = kind(**values)
            except TypeError as err:
                raise ConfigError(f"bad {name} config: {err}") from None
        return cls(**parts).validate()
