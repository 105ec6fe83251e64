"""A drawn digit as a model's input (cvae.drawing), what a model makes of it, and the completions' spread."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvae.config import DataConfig
from cvae.data import load_data
from cvae.drawing import centre_digit, fit_grid, model_input, read_digit
from cvae.errors import CVAEError
from cvae.generate import complete, load_model
from cvae.train import main as train


def _com(a: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(a.shape)
    return (ys * a).sum() / a.sum(), (xs * a).sum() / a.sum()


def _box(a: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 300 MNIST test digits in grey levels, and their labels."""
    data = load_data(DataConfig(dataset="MNIST", binarize="none", train_subset=1, test_subset=300))
    return data.test_x, data.test_y


def test_centre_digit_sizes_and_places_a_drawing_as_mnist_digits_are() -> None:
    canvas = np.zeros((280, 280), np.float32)
    canvas[20:170, 200:250] = 1.0  # a bar 150 tall and 50 wide, in the top-right corner
    digit = centre_digit(canvas)
    assert digit.shape == (28, 28) and digit.dtype == np.float32 and digit.min() >= 0 and digit.max() <= 1
    assert _box(digit > 0.05) == (20, 7)  # the longer side fills 20 of 28, the aspect ratio kept (150:50 -> 20:7)
    cy, cx = _com(digit)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5  # the centre of mass on pixel (14, 14), as MNIST's
    assert not centre_digit(np.zeros((100, 100))).any()  # nothing drawn: an empty field
    assert centre_digit(canvas, (12, 12)).shape == (12, 12)
    with pytest.raises(CVAEError, match="one grey image"):
        centre_digit(np.zeros((2, 28, 28)))


def test_centre_digit_gives_mnist_digits_back(mnist) -> None:
    """An MNIST digit drawn ten times larger anywhere-sized comes back as itself: the same box and place."""
    x, _ = mnist
    match = []
    for image in x[:60, 0].numpy():
        big = np.asarray(Image.fromarray(image, mode="F").resize((280, 280), Image.Resampling.BILINEAR))
        match.append(np.corrcoef(centre_digit(big).ravel(), image.ravel())[0, 1])
    assert np.median(match) > 0.93 and np.min(match) > 0.6, (np.median(match), np.min(match))


def test_fit_grid_scales_without_moving() -> None:
    canvas = np.zeros((280, 280), np.float32)
    canvas[140:, :140] = 1.0  # the bottom-left quadrant
    grid = fit_grid(canvas)
    assert grid.shape == (28, 28) and np.allclose(grid[14:, :14], 1) and not grid[:14].any() and not grid[:, 14:].any()


def test_model_input_binarizes_for_a_bernoulli_model(tiny_run: Path) -> None:
    model = load_model(tiny_run)
    grey = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    x = model_input(model, grey)
    assert x.shape == (1, 28, 28) and set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x[0], torch.from_numpy(grey >= 0.5).float())  # the reference's rule, as in training
    with pytest.raises(CVAEError, match="28x28"):
        model_input(model, np.zeros((20, 20)))
    # a completion model trained on grey digits (Pyro's protocol) reads the drawing's grey levels as they are
    model.run_config = replace(model.run_config, data=replace(model.run_config.data, binarize="none"))
    assert torch.equal(model_input(model, grey)[0], torch.from_numpy(grey))


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory):
    """A label CVAE trained for one epoch on 6,000 MNIST digits (about 10 s): enough to read digits."""
    folder = tmp_path_factory.mktemp("reader") / "run"
    train(dataset="MNIST", latent_dim=2, epochs=1, batch_size=100, learning_rate=3e-3, arch="mlp", mlp_hidden=(256,),
          train_subset=6000, test_subset=100, latent_subset=100, run_dir=str(folder), quiet=True, threads=2)  # fmt: skip
    return load_model(folder)


def test_read_digit_decodes_one_code_under_every_class(reader) -> None:
    data = load_data(DataConfig(dataset="MNIST", binarize="static", train_subset=1, test_subset=40))
    seen = read_digit(reader, data.test_x[0])
    assert seen.images.shape == (10, 1, 28, 28) and seen.nelbo.shape == (10,) and seen.mu.shape == (2,)
    assert seen.guess == int(seen.nelbo.argmin()) and seen.label == seen.guess
    with torch.no_grad():
        mu = reader.encode(data.test_x[:1], torch.tensor([seen.label])).mu  # (1, Z) under the guessed class
        every = reader.generate(mu.expand(10, -1), torch.arange(10))  # that one code under each class
    assert torch.allclose(seen.mu, mu[0]) and torch.allclose(seen.images, every)
    again = read_digit(reader, data.test_x[0])
    assert torch.equal(again.nelbo, seen.nelbo)  # seeded: the same guess on every rerun of the page
    other = read_digit(reader, data.test_x[0], label=(seen.guess + 1) % 10)  # encoded under a class you choose
    assert other.label == (seen.guess + 1) % 10 and other.guess == seen.guess and not torch.equal(other.mu, seen.mu)
    # The guess is Bayes' rule with the ELBO: right for most test digits (chance is 1 in 10).
    right = sum(read_digit(reader, data.test_x[i]).guess == int(data.test_y[i]) for i in range(40))
    assert right >= 24, f"{right} of 40 test digits read right"
    with pytest.raises(CVAEError, match="label must be a class"):
        read_digit(reader, data.test_x[0], label=10)
    with pytest.raises(CVAEError, match="expected one 1x28x28"):
        read_digit(reader, data.test_x[0, 0])


def test_read_digit_of_a_plain_vae_and_a_completion_model(tmp_path: Path) -> None:
    common = dict(dataset="MNIST", epochs=1, batch_size=32, arch="mlp", mlp_hidden=(32,), train_subset=64,
                  test_subset=32, latent_dim=3, quiet=True, threads=1)  # fmt: skip
    train(condition="none", run_dir=str(tmp_path / "vae"), **common)
    vae = load_model(tmp_path / "vae")
    x = torch.zeros(1, 28, 28)
    x[0, 8:20, 12:15] = 1
    seen = read_digit(vae, x)
    assert seen.label is None and seen.guess is None  # no class given, none to guess
    assert seen.images.shape == (1, 1, 28, 28) and seen.nelbo.shape == (1,)  # one reconstruction
    with pytest.raises(CVAEError, match="label must be a class"):
        read_digit(vae, x, label=3)  # a VAE has no class to encode under
    train(condition="quadrants", quadrants=1, run_dir=str(tmp_path / "q1"), **common)
    with pytest.raises(CVAEError, match="completes a given part"):
        read_digit(load_model(tmp_path / "q1"), x)


def test_completions_spread_is_their_per_pixel_std(tmp_path: Path) -> None:
    train(dataset="MNIST", condition="quadrants", quadrants=1, epochs=1, batch_size=32, arch="mlp", mlp_hidden=(32,),
          train_subset=64, test_subset=32, latent_dim=3, run_dir=str(tmp_path / "q1"), quiet=True, threads=1)  # fmt: skip
    model = load_model(tmp_path / "q1")
    drawn = torch.zeros(1, 28, 28)
    drawn[0, 14:, 4:8] = 1  # a stroke in the given bottom-left quadrant
    done = complete(model, drawn, quadrants=1, samples=20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(done.spread, done.samples.std(0, correction=0))
    assert not done.spread[14:, :14].any() and done.spread[:14].max() > 0  # the given part is certain, the rest not
