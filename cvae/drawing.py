"""A digit drawn by hand, made into a model's input the way MNIST's digits were made, and what a model
makes of it: its reconstruction under every class, its guess of the class, and where it lands in z.

    from cvae.drawing import centre_digit, model_input, read_digit
    x = model_input(model, centre_digit(ink))   # ink: (H, W) in [0, 1], white strokes on black, any size
    seen = read_digit(model, x)                  # seen.label, seen.mu (Z,), seen.images (10, 1, 28, 28)

MNIST's digits (LeCun et al. 1998) were scaled to fit a 20x20 box, aspect ratio kept, anti-aliased to grey
levels, then placed in a 28x28 field with their centre of mass at its centre: `centre_digit` does the same
to a drawing, so that a model trained on MNIST meets a digit of the size and place it knows. For digit
completion, where the place is the point, `fit_grid` only scales the drawing to the model's grid.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from cvae.errors import CVAEError
from cvae.estimators import elbo_per_image
from cvae.model import CVAE

MNIST_BOX = 20 / 28  # the share of the field that a digit's longer side fills


def _check(ink: np.ndarray) -> np.ndarray:
    ink = np.asarray(ink, dtype=np.float32)
    if ink.ndim != 2 or not ink.size:
        raise CVAEError(f"a drawing is one grey image (H, W), got shape {ink.shape}")
    return np.clip(np.nan_to_num(ink), 0.0, 1.0)


def _resize(ink: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-averaged when shrinking (the anti-aliasing MNIST had), bilinear when enlarging."""
    from PIL import Image

    shrink = height <= ink.shape[0] and width <= ink.shape[1]
    filt = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(ink, mode="F").resize((width, height), filt), dtype=np.float32)


def fit_grid(ink: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """A drawing (H, W) scaled to `size` as it is, nothing moved: (h, w) float32 in [0, 1]."""
    return np.clip(_resize(_check(ink), *size), 0.0, 1.0)


def centre_digit(ink: np.ndarray, size: tuple[int, int] = (28, 28), *, threshold: float = 0.05) -> np.ndarray:
    """A drawing (H, W) in [0, 1] (ink high) as an MNIST digit: the bounding box of its ink (pixels above
    `threshold`) scaled so its longer side is 20/28 of the field, aspect ratio kept, then placed in a field of
    `size` with its centre of mass at the centre. (h, w) float32 in [0, 1]; all zeros if nothing is drawn."""
    ink = _check(ink)
    h, w = size
    out = np.zeros((h, w), dtype=np.float32)
    rows, cols = np.flatnonzero((ink > threshold).any(1)), np.flatnonzero((ink > threshold).any(0))
    if not len(rows):
        return out
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = max(1.0, MNIST_BOX * min(h, w)) / max(crop.shape)
    digit = np.clip(_resize(crop, max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))), 0, 1)
    mass = digit.sum()
    if mass <= 0:
        return out
    ys, xs = np.indices(digit.shape)
    cy, cx = (ys * digit).sum() / mass, (xs * digit).sum() / mass  # in pixel indices of `digit`
    # MNIST's centres of mass sit on pixel (14, 14) of 28x28 (the test set's mean is 13.99, 14.01): h // 2.
    top = int(np.clip(round(h // 2 - cy), 0, h - digit.shape[0]))
    left = int(np.clip(round(w // 2 - cx), 0, w - digit.shape[1]))
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return out


def model_input(model: CVAE, image: np.ndarray) -> torch.Tensor:
    """A grey (H, W) image as the model's input (1, H, W): binarized (pixel >= 0.5 -> 1) for a Bernoulli
    decoder whose training images were binarized; as it is for a Gaussian one, or one trained on grey images
    (`--binarize none`, which the model's run config says when it was loaded from a run)."""
    c = model.config
    if c.channels != 1:
        raise CVAEError(f"a drawing is one grey image; this model takes {c.channels} channels")
    x = torch.from_numpy(_check(image))
    if tuple(x.shape) != (c.height, c.width):
        raise CVAEError(f"the model takes {c.height}x{c.width} images, got {tuple(x.shape)}")
    run_config = getattr(model, "run_config", None)
    grey = run_config is not None and run_config.data.binarize == "none"
    if c.likelihood == "bernoulli" and not grey:
        x = (x >= 0.5).float()
    return x[None]


class DigitReading(NamedTuple):
    """What a label CVAE or a plain VAE makes of one image."""

    x: torch.Tensor  # (C, H, W): the image it was given
    label: int | None  # the class it was encoded under; None for a plain VAE, which has none
    guess: int | None  # the class under which the image is most likely (the lowest -ELBO); None for a VAE
    nelbo: torch.Tensor  # (K,) -ELBO in nats under each class, mean of `samples` draws; (1,) for a VAE
    mu: torch.Tensor  # (Z,): the mean of q(z | x, label)
    images: torch.Tensor  # (K, C, H, W): that mean decoded under each class, E[x | mu, k]; (1, ...) for a VAE


@torch.no_grad()
def read_digit(model: CVAE, x: torch.Tensor, *, label: int | None = None, samples: int = 16,
               seed: int = 0) -> DigitReading:  # fmt: skip
    """Encode one image (C, H, W) under `label` (None: the model's guess) and decode its posterior mean under
    every class. The guess is Bayes' rule with the ELBO for log p(x | y) and equal priors: the class under
    which the image's -ELBO (`samples` draws of z, seeded) is lowest. A plain VAE (condition none) has one
    reconstruction and no guess."""
    c = model.config
    if c.condition not in ("label", "none"):
        raise CVAEError("this model completes a given part of a digit (condition quadrants): use cvae.complete")
    if tuple(x.shape) != (c.channels, c.height, c.width):
        raise CVAEError(f"expected one {c.channels}x{c.height}x{c.width} image, got shape {tuple(x.shape)}")
    if not 1 <= samples <= 256:
        raise CVAEError(f"samples must be 1 to 256, got {samples}")
    labelled = c.condition == "label"
    k = c.num_classes if labelled else 1
    if label is not None and not (labelled and 0 <= label < k):
        raise CVAEError(f"label must be a class 0 to {c.num_classes - 1} of a label model, got {label!r}")
    device = next(model.parameters()).device
    ys = torch.arange(k).repeat_interleave(samples)  # (K * S,): every class, `samples` times
    terms = elbo_per_image(model, x[None].expand(len(ys), -1, -1, -1), ys, seed=seed)
    nelbo = terms.nelbo.view(k, samples).mean(1).float()
    guess = int(nelbo.argmin()) if labelled else None
    label = (guess if label is None else int(label)) if labelled else None
    was_training = model.training
    model.eval()
    try:
        mu = model.encode(x[None].to(device), torch.tensor([label or 0], device=device)).mu  # (1, Z)
        images = model.generate(mu.expand(k, -1), torch.arange(k, device=device)).cpu()
    finally:
        model.train(was_training)
    return DigitReading(x.cpu(), label, guess, nelbo, mu[0].cpu(), images)
