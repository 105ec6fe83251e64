"""Model shapes come from the config; the reference's layer sizes are kept."""

from __future__ import annotations

import pytest
import torch

from cvae.config import ModelConfig, conv_preset
from cvae.errors import ConfigError
from cvae.model import CVAE, count_parameters


def conv_config(c: int, h: int, w: int, **kw) -> ModelConfig:
    return ModelConfig(channels=c, height=h, width=w, num_classes=10, **conv_preset(h, w), **kw)


def test_reference_mnist_parameter_count() -> None:
    model = CVAE(conv_config(1, 28, 28, latent_dim=2))
    assert round(count_parameters(model) / 1e6, 1) == 15.0  # REFERENCE.md: about 15.0 M


@pytest.mark.parametrize(
    "c,h,w,likelihood,learn_sigma",
    [
        (1, 28, 28, "bernoulli", False),
        (1, 28, 28, "gaussian", True),
        (3, 32, 32, "gaussian", False),
        (3, 32, 32, "gaussian", True),  # the reference's CIFAR learned-sigma path crashed
        (3, 64, 48, "gaussian", True),  # a user's own non-square images
        (1, 20, 12, "gaussian", False),
    ],
)
def test_conv_shapes_for_every_decoder(c: int, h: int, w: int, likelihood: str, learn_sigma: bool) -> None:
    torch.manual_seed(0)
    model = CVAE(conv_config(c, h, w, latent_dim=3, likelihood=likelihood, learn_sigma=learn_sigma))
    x = torch.rand(4, c, h, w)
    if likelihood == "bernoulli":
        x = x.round()
    y = torch.tensor([0, 3, 9, 1])
    out = model(x, y)
    assert out.out.shape == (4, c * (2 if learn_sigma else 1), h, w)
    assert out.mu.shape == out.std.shape == out.z.shape == (4, 3)
    assert (out.std > 0).all()
    terms = model.objective(x, y)
    assert terms.recon.shape == terms.kl.shape == (4,)
    assert torch.isfinite(terms.loss)
    terms.loss.backward()
    assert model.generate(torch.zeros(2, 3), torch.tensor([1, 2])).shape == (2, c, h, w)


def test_mlp_architecture() -> None:
    cfg = ModelConfig(channels=1, height=28, width=28, num_classes=10, arch="mlp", mlp_hidden=(32, 16), latent_dim=2)
    model = CVAE(cfg)
    terms = model.objective(torch.rand(3, 1, 28, 28).round(), torch.tensor([1, 2, 3]))
    assert terms.loss.ndim == 0 and torch.isfinite(terms.loss)


def test_label_changes_the_decoded_image() -> None:
    torch.manual_seed(0)
    model = CVAE(conv_config(1, 28, 28, latent_dim=2)).eval()
    z = torch.zeros(2, 2)
    images = model.generate(z, torch.tensor([0, 1]))
    assert not torch.allclose(images[0], images[1])


def test_bernoulli_on_rgb_is_refused() -> None:
    with pytest.raises(ConfigError, match="Gaussian"):
        CVAE(conv_config(3, 32, 32, likelihood="bernoulli"))


def test_odd_sizes_get_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        ModelConfig(channels=1, height=30, width=30, num_classes=10, **conv_preset(30, 30)).validate()
