"""Typed configuration: what a run is, and every option of it, declared once.

`RunConfig` = `DataConfig` (what to train on) + `ModelConfig` (the network,
whose shapes come from the data layer's `DatasetInfo`, never from a dataset
name) + `TrainConfig` (the optimisation). `LaunchOptions` holds what is not
part of a run (which folder, resuming, quiet). It round-trips through plain
JSON so that a run folder and a checkpoint can hold it.

Each user-facing field is declared with `option(...)`: its default, help,
limits, command-line flags, form label and resume rule live in the field's
metadata. `OPTIONS` lists them; the command line (cvae.cli), the notebook
function (cvae.train), the app's form (ui.train_form) and the resume rules
are all built from it, and `check_option` is the one validation of a value.
Adding an option is one field here plus the code that uses it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin

from cvae.errors import ConfigError

Arch = Literal["conv", "mlp"]
Likelihood = Literal["bernoulli", "gaussian"]
Binarize = Literal["auto", "static", "dynamic", "none"]
Precision = Literal["auto", "fp32", "bf16"]
LRSchedule = Literal["plateau", "cosine", "exponential"]
CudaGraph = Literal["auto", "on", "off"]
Activation = Literal["relu", "silu", "gelu", "elu", "tanh"]
Norm = Literal["none", "batch", "layer"]
Condition = Literal["label", "none", "quadrants"]
Prior = Literal["standard", "conditional"]

ARCHS: tuple[str, ...] = get_args(Arch)
LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)
PRECISIONS: tuple[str, ...] = get_args(Precision)
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
CUDA_GRAPH_MODES: tuple[str, ...] = get_args(CudaGraph)
CONDITIONS: tuple[str, ...] = get_args(Condition)

# Where an option appears: the reference's flags first, then the rest (command line and form alike).
REFERENCE, MORE = "the reference's options", "more options"


def option(
    default: Any, help: str, *, name: str | None = None, short: str | None = None, low: float | None = None,
    high: float | None = None, low_open: bool = False, group: str = MORE, label: str | None = None,
    form: str | None = "more", resume: str = "fixed", values: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """A dataclass field that is also a user option.

    name: the option's keyword (the reference's, e.g. decoder_type for likelihood);
    the flag is --name (and --kebab-name). short: the reference's short flag.
    low/high: inclusive limits (low_open: the low end excluded). form: "main",
    "more" or None (not in the app's form). resume: "fixed" (must match the
    checkpoint), "override" (may change when resuming). values: the spellings a
    user types for each stored value (decoder_type Bernoulli -> bernoulli).
    """
    meta = dict(help=help, name=name, short=short, low=low, high=high, low_open=low_open, group=group,
                label=label, form=form, resume=resume, values=values)  # fmt: skip
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"option": meta})


@dataclass(frozen=True)
class Option:
    """One user option, derived from a config field and its `option(...)` metadata."""

    section: str  # data, model, train or launch: the dataclass that holds it
    field: str  # the dataclass field
    name: str  # the keyword in train(...) and the flag's stem
    kind: type  # int, float, bool, str or tuple (of ints)
    optional: bool  # None is allowed (it means "not set": all images, the first image's size...)
    choices: tuple[str, ...] | None
    default: Any
    help: str
    short: str | None
    low: float | None
    high: float | None
    low_open: bool
    group: str
    label: str
    form: str | None
    resume: str
    values: dict[str, Any] | None

    @property
    def flags(self) -> list[str]:
        """--name as the reference spells it, the other spelling (_ or -) as an alias, then the short flag."""
        snake, kebab = f"--{self.name}", f"--{self.name.replace('_', '-')}"
        first, other = (snake, kebab) if self.group == REFERENCE else (kebab, snake)
        return [first, *([other] if other != first else []), *([self.short] if self.short else [])]

    def describe(self) -> str:
        """What a valid value is, in words: the one wording used by every check."""
        if self.choices:
            return "one of " + ", ".join(self.user_choices())
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "text", tuple: "integers"}[self.kind]
        if self.kind is tuple:
            kind = "a list of positive integers (e.g. 512,512; empty for none)"
        low, high = self.low, self.high
        if low is None and high is None:
            return kind
        if high is None:
            return f"{kind} above {_num(low)}" if self.low_open else f"{kind} of at least {_num(low)}"
        if low is None:
            return f"{kind} of at most {_num(high)}"
        return f"{kind} above {_num(low)} and at most {_num(high)}" if self.low_open else \
            f"{kind} from {_num(low)} to {_num(high)}"  # fmt: skip

    def user_choices(self) -> list[str]:
        """The choices as a user types them (Bernoulli rather than bernoulli)."""
        shown = {stored: typed for typed, stored in (self.values or {}).items()}
        return [shown.get(c, c) for c in self.choices or ()]

    def check(self, value: Any) -> Any:
        """The value, normalised (a choice in any case, a list as a tuple), or a one-line ConfigError."""
        if value is None and self.optional:
            return None
        if self.values and isinstance(value, str):
            value = {k.lower(): v for k, v in self.values.items()}.get(value.strip().lower(), value)
        if self.choices:
            if isinstance(value, str) and value.strip().lower() in self.choices:
                return value.strip().lower()
            raise self.error(value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise self.error(value)
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise self.error(value)
            return value
        if self.kind is tuple:  # layer widths; () = no hidden layer
            if not isinstance(value, (tuple, list)) or \
                    not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):  # fmt: skip
                raise self.error(value)
            return tuple(value)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (self.kind is int and not isinstance(value, int)) or not math.isfinite(value):
            raise self.error(value)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise self.error(value)
        if self.high is not None and value > self.high:
            raise self.error(value)
        return float(value) if self.kind is float else value

    def error(self, value: Any) -> ConfigError:
        return ConfigError(f"{self.name} must be {self.describe()}, got {value!r}")

    def parse(self, text: str) -> Any:
        """Text from a command line or a form to a value of the right type (limits are check's job)."""
        if self.optional and text.strip().lower() in ("", "none"):
            return None
        if self.kind is bool:
            word = text.strip().lower()
            if word in ("true", "1", "yes", "y", "on"):
                return True
            if word in ("false", "0", "no", "n", "off"):
                return False
            raise self.error(text)
        if self.kind in (int, float):
            try:
                return self.kind(text)
            except ValueError:
                raise self.error(text) from None
        if self.kind is tuple:
            try:
                return tuple(int(part) for part in text.split(",") if part.strip())
            except ValueError:
                raise self.error(text) from None
        return text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _options_of(section: str, cls: type) -> list[Option]:
    hints = typing.get_type_hints(cls)
    found = []
    for f in fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        hint = hints[f.name]
        optional = False
        if get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in get_args(hint) if a is not type(None)]
            optional, hint = True, args[0]
        choices = get_args(hint) if get_origin(hint) is Literal else None
        kind = str if choices else (tuple if get_origin(hint) is tuple else hint)
        found.append(Option(
            section=section, field=f.name, name=meta["name"] or f.name, kind=kind, optional=optional,
            choices=choices, default=f.default, help=meta["help"], short=meta["short"], low=meta["low"],
            high=meta["high"], low_open=meta["low_open"], group=meta["group"],
            label=meta["label"] or f.name.replace("_", " ").capitalize(), form=meta["form"], resume=meta["resume"],
            values=meta["values"],
        ))  # fmt: skip
    return found


def _check_fields(obj: Any, section: str) -> None:
    for opt in OPTIONS:
        if opt.section == section and opt.check(getattr(obj, opt.field)) != getattr(obj, opt.field):
            raise opt.error(getattr(obj, opt.field))  # stored values must already be in normal form


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which images, where they live, and how they are prepared."""

    dataset: str = option("MNIST", "MNIST, CIFAR10, or the path of an image folder (one sub-folder per class)",
                          short="-d", group=REFERENCE, label="Dataset", form="main")  # fmt: skip
    data_dir: str = option("", "folder with MNIST/raw and cifar-10-batches-py (empty: the project's data/ or "
                           "$CVAE_DATA_DIR)", label="Data folder", form=None)  # fmt: skip
    binarize: Binarize = option("auto", "Bernoulli decoder: pixel >= 0.5 once (static, the reference) or a fresh "
                                "draw every batch (dynamic); auto = static for Bernoulli, none (grey levels) "
                                "for Gaussian; a Bernoulli digit-completion run may take none: grey targets scored "
                                "by cross-entropy, as Pyro's CVAE tutorial scores them (docs/completion.md)",
                                label="Binarize")  # fmt: skip
    image_size: int | None = option(None, "image folders: resize to this many pixels square (empty: the first "
                                    "image's size)", low=1, high=512, label="Resize folder images to (px)")  # fmt: skip
    train_subset: int | None = option(None, "train on the first N images only (empty: all)", low=1,
                                      label="Train images")  # fmt: skip
    test_subset: int | None = option(None, "test on the first N images only (empty: all)", low=1,
                                     label="Test images")  # fmt: skip
    test_fraction: float = option(0.1, "image folders without train/ and test/: the share held out for testing",
                                  low=0, high=0.9, low_open=True, form=None)  # fmt: skip
    split_seed: int = option(0, "image folders without train/ and test/: the seed of the held-out split", low=0,
                             form=None)  # fmt: skip

    def validate(self) -> None:
        _check_fields(self, "data")
        if not self.dataset.strip():
            raise ConfigError("dataset must be MNIST, CIFAR10 or a path to an image folder")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network. Shapes (channels, height, width, classes) come from the data."""

    channels: int
    height: int
    width: int
    num_classes: int
    condition: Condition = option("label", "what the model is given besides z, the c of q(z | x, c) and "
                                  "p(x | z, c): label (the class, the reference), none (a plain VAE: no label "
                                  "anywhere, so z must hold the class too) or quadrants (the CVAE paper's digit "
                                  "completion: c is the given part of the digit and only the hidden part is scored; "
                                  "see docs/completion.md)", label="Condition", form="main")  # fmt: skip
    quadrants: int = option(1, "condition quadrants: how many quadrants are given (bottom-left, then top-left, "
                            "then top-right); 0 = a random 1-3 per training image", low=0, high=3,
                            label="Quadrants given")  # fmt: skip
    mask_channel: bool = option(False, "condition quadrants: also give the networks the 0/1 mask of the given "
                                "pixels (needed, and set, with a random quadrant count)",
                                label="Give the mask too")  # fmt: skip
    prior: Prior = option(
        "standard",
        "the prior p(z | c): standard (N(0, I), the reference) or conditional "
        "(a Gaussian from a network of c, the paper's prior network)",
        label="Prior p(z | c)",
    )
    alpha: float = option(1.0, "the paper's hybrid objective: alpha x (-ELBO) + (1 - alpha) x the GSNN loss "
                          "(-log p(x | z, c) with z from the prior); 1 = the CVAE's ELBO alone", low=0, high=1,
                          label="Hybrid weight alpha")  # fmt: skip
    kl_weight: float = option(1.0, "the KL term's weight beta in the training objective (beta-VAE, Higgins et al. "
                              "2017); every figure called -ELBO stays the true beta = 1 bound, and the objective "
                              "trained is logged beside it as train_objective", low=0, high=1000,
                              label="KL weight β")  # fmt: skip
    kl_warmup_epochs: float = option(0.0, "KL warm-up: the KL weight rises linearly from 0 to beta over the first "
                                     "N epochs (Bowman et al. 2016); 0 = beta from the start", low=0, high=1000,
                                     label="KL warm-up epochs")  # fmt: skip
    free_bits: float = option(0.0, "free bits lambda: nats of KL per latent dimension, averaged over the batch, "
                              "that cost nothing (Kingma et al. 2016): no dimension is pushed below it", low=0,
                              high=100, label="Free bits λ")  # fmt: skip
    baseline: bool = option(
        False,
        "also train the paper's deterministic baseline p(x | c) (the generation "
        "network without z) beside the CVAE, on the same batches",
        label="Train the baseline",
    )
    latent_dim: int = option(10, "latent dimension (2 gives a latent space you can see directly)", short="-z",
                             low=1, high=1024, group=REFERENCE, label="Latent size z", form="main")  # fmt: skip
    likelihood: Likelihood = option("bernoulli", "the decoder p(x | z, y): Bernoulli (black-and-white pixels) or "
                                    "Gaussian (grey or colour levels)", name="decoder_type", short="-t",
                                    group=REFERENCE, label="Decoder p(x | z, y)", form="main",
                                    values={"Bernoulli": "bernoulli", "Gaussian": "gaussian"})  # fmt: skip
    learn_sigma: bool = option(False, "Gaussian decoder: learn a per-pixel standard deviation too",
                               name="model_sigma", short="-s", group=REFERENCE, label="Learn σ",
                               form="main")  # fmt: skip
    arch: Arch = option("conv", "the reference's conv layers, or a fast MLP", label="Architecture",
                        form="main")  # fmt: skip
    fixed_sigma: float = option(1.0, "Gaussian decoder with a fixed sigma: its standard deviation", low=0,
                                high=100, low_open=True, label="Fixed σ")  # fmt: skip
    sigma_min: float = option(1e-3, "floor on learned standard deviations (softplus + floor), for stability",
                              low=0, high=1, low_open=True, form=None)  # fmt: skip
    # conv architecture: the reference's layer widths, chosen from the image size (see `conv_preset`)
    enc_channels: tuple[int, ...] = (64, 128)
    enc_hidden: tuple[int, ...] = (1024,)
    dec_hidden: tuple[int, ...] = (1024,)
    dec_start_channels: int = 128
    dec_channels: tuple[int, ...] = (64,)
    # mlp architecture
    mlp_hidden: tuple[int, ...] = option((512, 512), "MLP architecture: hidden layer widths, comma-separated",
                                         form=None)  # fmt: skip
    mlp_activation: Activation = option("relu", "MLP architecture: the activation between layers", form=None)
    mlp_norm: Norm = option("none", "MLP architecture: normalisation after each hidden layer", form=None)

    def validate(self) -> None:
        _check_fields(self, "model")
        for name in ("channels", "height", "width", "num_classes", "dec_start_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {self.num_classes}")
        for name in ("enc_channels", "enc_hidden", "dec_hidden", "dec_channels"):
            if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in getattr(self, name)):
                raise ConfigError(f"{name} must be positive integers, got {getattr(self, name)!r}")
        if self.condition == "quadrants" and (self.arch, self.likelihood, self.channels) != ("mlp", "bernoulli", 1):
            raise ConfigError("condition quadrants trains the completion MLPs on black-and-white digits: it needs "
                              "arch mlp, decoder_type Bernoulli and MNIST")  # fmt: skip
        if self.condition == "quadrants" and (self.height % 2 or self.width % 2):
            raise ConfigError(f"condition quadrants needs even image sides, got {self.height}x{self.width}")
        if self.condition == "quadrants" and self.quadrants == 0 and not self.mask_channel:
            raise ConfigError("a random quadrant count (quadrants 0) needs mask_channel: the zeros of a hidden "
                              "quadrant look like ink-free given pixels otherwise")  # fmt: skip
        if self.mask_channel and self.condition != "quadrants":
            raise ConfigError("mask_channel belongs to condition quadrants")
        if self.condition == "none" and (self.prior == "conditional" or self.baseline):
            raise ConfigError("condition none gives the networks nothing: no conditional prior and no baseline")
        if self.baseline and self.arch != "mlp":
            raise ConfigError("the baseline network is built for the MLP architecture (--arch mlp)")
        if self.likelihood == "bernoulli" and self.learn_sigma:
            raise ConfigError("learned sigma needs the Gaussian decoder (-t Gaussian)")
        if self.likelihood == "bernoulli" and self.channels != 1:
            raise ConfigError(
                f"the Bernoulli decoder models black-and-white images; this data has {self.channels} colour "
                "channels: use -t Gaussian"
            )
        if self.arch == "conv":
            if not self.enc_channels or not self.dec_channels:
                raise ConfigError("the conv architecture needs at least one conv layer each way")
            down = 2 ** (len(self.dec_channels) + 1)
            if self.height % down or self.width % down:
                raise ConfigError(
                    f"the conv architecture needs image sides divisible by {down}, got "
                    f"{self.height}x{self.width}: resize (--image-size) or use --arch mlp"
                )

    @property
    def shaped_kl(self) -> bool:
        """Whether training minimises something other than the negative ELBO's KL (beta, warm-up, free bits)."""
        return self.kl_weight != 1 or self.kl_warmup_epochs > 0 or self.free_bits > 0

    @property
    def label_width(self) -> int:
        """Width of the label's one-hot code that the networks get: num_classes, or 0 otherwise."""
        return self.num_classes if self.condition == "label" else 0

    @property
    def condition_width(self) -> int:
        """Width of the condition code c: the one-hot label, nothing, or the given pixels (and their mask)."""
        if self.condition == "quadrants":
            return self.channels * self.height * self.width * (2 if self.mask_channel else 1)
        return self.label_width

    @property
    def out_channels(self) -> int:
        """Decoder output channels: one set of parameters per pixel, two with learned sigma."""
        return self.channels * (2 if self.learn_sigma else 1)


def conv_preset(height: int, width: int) -> dict[str, Any]:
    """The reference's conv layer widths for an image of this size.

    Images of 32 px or more with sides divisible by 16 get its CIFAR layers:
    three convs down, a 448-channel 2x2 start and four deconvs up. Others get
    its MNIST layers: two stride-2 convs and a 1024-wide hidden layer each way
    (ModelConfig.validate then says if the sides do not fit). The choice
    depends on shape alone, so a user's own images get whichever fits.
    """
    if min(height, width) >= 32 and height % 16 == 0 and width % 16 == 0:
        return dict(enc_channels=(64, 128, 256), enc_hidden=(), dec_hidden=(), dec_start_channels=448,
                    dec_channels=(256, 128, 64))  # fmt: skip
    return dict(enc_channels=(64, 128), enc_hidden=(1024,), dec_hidden=(1024,), dec_start_channels=128,
                dec_channels=(64,))  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping. Defaults are the reference's command line."""

    epochs: int = option(10, "epochs to train (more, when resuming)", short="-e", low=1, high=100_000,
                         group=REFERENCE, label="Epochs", form="main", resume="override")  # fmt: skip
    batch_size: int = option(64, "batch size for training and testing", short="-b", low=1, high=65_536,
                             group=REFERENCE, label="Batch size", resume="override")  # fmt: skip
    learning_rate: float = option(3e-4, "Adam's learning rate (the reference's published results used 1e-4)",
                                  short="-lr", low=0, high=1, low_open=True, group=REFERENCE,
                                  label="Learning rate", form="main", resume="override")  # fmt: skip
    print_every: int = option(1, "log the batch loss every N batches", short="-p", low=1, high=100_000,
                              group=REFERENCE, label="Log the loss every N batches", resume="override")  # fmt: skip
    seed: int = option(0, "random seed", low=0, high=2**31 - 1, label="Seed")
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", label="Device",
                         resume="override")  # fmt: skip
    precision: Precision = option("auto", "auto = bf16 autocast where the hardware runs it natively",
                                  label="Precision", resume="override")  # fmt: skip
    checkpoint_every: int = option(20, "keep a numbered checkpoint every N epochs (latest.pt is every epoch)",
                                   low=1, high=100_000, label="Keep a checkpoint every N epochs",
                                   resume="override")  # fmt: skip
    plateau_patience: int = option(5, "plateau and exponential schedules: epochs without improvement of the "
                                   "training loss before the rate is cut by 10", low=0, high=1000,
                                   form=None)  # fmt: skip
    latent_subset: int = option(2000, "test images whose latent means are saved every epoch", low=0,
                                high=100_000, label="Test images in the latent plot", resume="override")  # fmt: skip
    grid_size: int = option(64, "test images shown as reconstructions", low=0, high=1024, form=None)
    preview_every: float = option(5.0, "while an epoch trains, refresh its live pictures (reconstructions and "
                                  "latent means) every N seconds of training, the first half a second after training starts "
                                  "(0 = pictures at epoch ends only)", low=0, high=86_400,
                                  label="Live pictures every N seconds", resume="override")  # fmt: skip
    threads: int = option(0, "CPU threads (0 = the available cores, shared with the runs training beside it in "
                          "the same runs folder, and half of them while another program keeps the cores busy "
                          "and steps measure faster so)", low=0, high=1024,
                          label="CPU threads (0 = all)", resume="override")  # fmt: skip
    lr_schedule: LRSchedule = option("plateau", "plateau: cut by 10 when the training loss stalls (the "
                                     "reference); cosine: a linear warm-up, then down to 0 at the last epoch; "
                                     "exponential: x --lr-decay after every epoch, and the plateau cut",
                                     label="Learning-rate schedule")  # fmt: skip
    lr_decay: float = option(1.0, "exponential schedule: multiply the rate by this after every epoch", low=0,
                             high=1, low_open=True, label="Decay per epoch")  # fmt: skip
    warmup_epochs: float = option(0.0, "cosine schedule: epochs of linear warm-up", low=0, high=1000,
                                  label="Warm-up epochs")  # fmt: skip
    refine_steps: int = option(0, "after the last epoch, also report the test ELBO with q refined per image by "
                               "N gradient steps (0 = off)", low=0, high=10_000, label="Refine q at the end: steps",
                               resume="override")  # fmt: skip
    cuda_graph: CudaGraph = option("auto", "CUDA: capture the whole training step as one CUDA graph (auto = on for "
                                   "CUDA devices; falls back to eager with a warning if the graph disagrees; off when "
                                   "several processes train one run, under torchrun or srun)",
                                   label="CUDA graph", resume="override")  # fmt: skip

    def validate(self) -> None:
        _check_fields(self, "train")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not (
            self.device.startswith("cuda:") and self.device[5:].isdigit()
        ):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.warmup_epochs and self.lr_schedule != "cosine":
            raise ConfigError("warmup_epochs needs lr_schedule cosine")
        if self.lr_decay != 1 and self.lr_schedule != "exponential":
            raise ConfigError("lr_decay belongs to the exponential schedule (--lr-schedule exponential)")


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """How this training process runs: not part of the run, so not saved in it."""

    resume_path: str | None = option(None, "resume from a run folder or a checkpoint file", short="-rp",
                                     group=REFERENCE, form=None)  # fmt: skip
    resume_epoch: int | None = option(None, "epochs already trained (checked against the checkpoint)",
                                      short="-re", low=0, group=REFERENCE, form=None)  # fmt: skip
    run_dir: str | None = option(None, "run folder to write; without it, a new <time>-<data>-<decoder>-z<z> folder in the runs root",
                                 form=None)  # fmt: skip
    runs_root: str | None = option(None, "folder that holds run folders; without it, $CVAE_RUNS_DIR or checkpoints/",
                                   form=None)  # fmt: skip
    quick_demo: bool = option(False, "the fast preset for class demos: MNIST, an MLP, z=2, 12 epochs on a cosine "
                              "schedule and a refined test ELBO, under a minute on 2 cores; options given with "
                              "it win", form=None)  # fmt: skip
    overwrite: bool = option(False, "start a new run in a --run-dir that already holds one, deleting its "
                             "checkpoints, metrics and pictures (without it, that is refused)", form=None)  # fmt: skip
    quiet: bool = option(False, "print nothing but errors", short="-q", form=None)


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
        if self.data.binarize == "auto":  # a run states what its data were: resolved from the decoder
            raise ConfigError("binarize must be static, dynamic or none in a run's config")
        # Grey targets under a Bernoulli decoder are a cross-entropy, not a likelihood of the pixels: allowed for
        # digit completion alone, where Pyro's tutorial measures it that way and ours is compared with it.
        if self.model.likelihood == "bernoulli" and self.data.binarize == "none" and \
                self.model.condition != "quadrants":  # fmt: skip
            raise ConfigError("the Bernoulli decoder needs binarized images (static or dynamic); grey ones "
                              "(binarize none) only for condition quadrants")  # fmt: skip
        if self.model.likelihood == "gaussian" and self.data.binarize != "none":
            raise ConfigError("the Gaussian decoder models grey levels: binarize must be none")
        data = (self.data.dataset.upper(), self.data.binarize)
        if self.model.condition == "quadrants" and data[0] != "MNIST":
            raise ConfigError("condition quadrants is the paper's MNIST experiment: dataset MNIST")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunConfig:
        """Rebuild from JSON-like data, refusing unknown or ill-typed keys."""
        if not isinstance(raw, dict) or "model" not in raw:
            raise ConfigError("not a cvae run config (expected data, model and train sections)")
        parts = {}
        for name, kind in SECTIONS.items():
            if name == "launch":
                continue
            section = raw.get(name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"config section {name!r} must be a mapping")
            known = {f.name for f in fields(kind)}
            unknown = sorted(set(section) - known)
            if unknown:
                raise ConfigError(f"unknown {name} option(s) in config: {', '.join(unknown)}")
            # JSON turns tuples into lists; turn them back. Runs saved before the schedules were
            # renamed say "exponential" for what is now "plateau" (with a decay of 1 they are the same).
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
            if name == "train" and values.get("lr_schedule") == "exponential" and values.get("lr_decay", 1.0) == 1:
                values["lr_schedule"] = "plateau"
            try:
                parts[name] = kind(**values)
            except TypeError as err:
                raise ConfigError(f"bad {name} config: {err}") from None
        return cls(**parts).validate()


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "launch": LaunchOptions}
OPTIONS: tuple[Option, ...] = tuple(opt for name, cls in SECTIONS.items() for opt in _options_of(name, cls))
BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}
DEFAULTS: dict[str, Any] = {opt.name: opt.default for opt in OPTIONS}

# The quick demo: a small MLP that trains in about a minute on 2 CPU cores (docs/benchmark.md has what it
# reaches). Options given with it win over the preset's, so `--quick-demo -z 10` changes the latent size only.
QUICK_DEMO: dict[str, Any] = dict(
    arch="mlp", latent_dim=2, mlp_hidden=(384, 384), batch_size=128, learning_rate=5e-3, lr_schedule="cosine",
    warmup_epochs=1.0, epochs=12, refine_steps=10,
)  # fmt: skip

# condition quadrants: the paper's completion model (docs/completion.md measured these), applied like the quick
# demo's: options given win. The prior network and the deterministic baseline are the paper's.
COMPLETION: dict[str, Any] = dict(arch="mlp", latent_dim=32, mlp_hidden=(500, 500), batch_size=128, learning_rate=1e-3,
                                  prior="conditional", baseline=True)  # fmt: skip
