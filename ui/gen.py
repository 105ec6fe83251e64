"""Generation for the Generate page: cached per-class grids, live slider decodes, restyle, interpolation."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from cvae.generate import random_images, restyle, uniform_images
from ui.models import cached_model, scale_for, upscale


@st.cache_data(max_entries=64, show_spinner="Decoding…")
def grid_png(checkpoint: str, version: tuple[int, int], mode: str, label: int, n: int, span: float, seed: int) -> bytes:
    """A PNG of n×n images of class `label`: uniform latent grid or random codes."""
    net, _ = cached_model(checkpoint, version)
    with torch.no_grad():
        images = uniform_images(net, label, n, span) if mode == "uniform" else random_images(net, label, n * n, seed)
    return upscale(images, n, max(1, scale_for(net.config.height) - 1), padding=1)


@torch.no_grad()
def decode_png(net, z: list[float], label: int) -> bytes:
    """One image for one code under one class, enlarged."""
    images = net.generate(torch.tensor([z], dtype=torch.float32), torch.tensor([label]))
    return upscale(images, 1, max(4, 2 * scale_for(net.config.height) * 2))


@torch.no_grad()
def restyle_png(net, x: np.ndarray, label: int) -> bytes:
    """The image's code decoded under every class, in one row."""
    images = restyle(net, torch.from_numpy(x), int(label))
    return upscale(images, len(images), 2 * scale_for(net.config.height))


@torch.no_grad()
def interpolate_png(net, xa: np.ndarray, ya: int, xb: np.ndarray, yb: int, steps: int) -> bytes:
    """Codes and one-hot labels blended linearly from image a to image b, decoded (one row)."""
    x = torch.from_numpy(np.stack([xa, xb]))
    y = torch.tensor([ya, yb])
    mu = net.encode(x, y).mu  # (2, Z)
    onehot = net.one_hot(y)  # (2, K)
    t = torch.linspace(0, 1, steps)[:, None]  # (S, 1)
    z = (1 - t) * mu[0] + t * mu[1]
    c = (1 - t) * onehot[0] + t * onehot[1]
    images = net.likelihood.mean(net.decoder(torch.cat([z, c], dim=1)).float())  # as CVAE.decode, mixed labels
    return upscale(images, steps, 2 * scale_for(net.config.height))


def grids(checkpoint: str, version: tuple[int, int], label: int, name: str, stem: str) -> None:
    """The uniform latent grid and the random samples of one class, side by side, with downloads."""
    c1, c2 = st.columns(2)
    span = c1.slider("Uniform grid covers z₁, z₂ in [−span, span]", 0.5, 4.0, 2.0, 0.5, key="gen_span")
    seed = c2.number_input("Random seed", 0, 10**6, 0, key="gen_seed")
    uniform = grid_png(checkpoint, version, "uniform", label, 20, span, 0)
    rand = grid_png(checkpoint, version, "random", label, 20, 2.0, int(seed))
    c1.image(uniform, caption=f"20×20 grid over z₁ (→) and z₂ (↑), class {name}", width="stretch")
    c2.image(rand, caption=f"400 random codes z ~ N(0, I), class {name}", width="stretch")
    c1.download_button("Grid PNG", uniform, f"{stem}_uniform_{label}.png", "image/png", key="dl_uniform",
                       icon=":material/download:")  # fmt: skip
    c2.download_button("Random PNG", rand, f"{stem}_random_{label}.png", "image/png", key="dl_random",
                       icon=":material/download:")  # fmt: skip


def sliders(net, label: int, name: str) -> None:
    """One slider per latent dimension (the first 8), decoded as they move."""
    zdim = net.config.latent_dim
    shown = min(zdim, 8)
    if zdim > shown:
        st.caption(f"Sliders for the first {shown} of {zdim} latent dimensions; the others stay at 0.")
    left, right = st.columns([2, 1])
    z = [left.slider(f"z{i + 1}", -3.0, 3.0, 0.0, 0.1, key=f"z_{i}") for i in range(shown)] + [0.0] * (zdim - shown)
    right.image(decode_png(net, z, label), caption=f"class {name}")


def same_style(net, names: list[str], x: np.ndarray | None, y: np.ndarray | None, label: int) -> None:
    """Encode a test image (or the user's picture) under its class, decode the code under every class."""
    from ui.upload import MAX_IMAGE_MB, picture_for

    st.caption("Encode one image under its own class, then decode the same code under every class.")
    own = x is None or st.toggle("Use my own picture", key="style_own")
    if own:
        c = net.config
        file = st.file_uploader(f"A picture (PNG or JPEG, at most {MAX_IMAGE_MB} MB), of the class picked above",
                                type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="style_upload",
                                max_upload_size=MAX_IMAGE_MB)  # fmt: skip
        invert = st.checkbox("Invert (for dark strokes on a light background; MNIST digits are light on dark)",
                             key="style_invert", disabled=c.channels != 1)  # fmt: skip
        if file is None:
            return
        try:
            image, cls = picture_for(c.channels, c.height, c.width, file.getvalue(), invert), label
        except ValueError as err:
            st.error(f"Cannot use {file.name[:80]}: {err}.")
            return
    else:
        i = st.number_input("Test image #", 0, len(x) - 1, 0, key="style_index")
        image, cls = x[i], int(y[i])
    a, b = st.columns([1, 6])
    a.image(upscale(image[None], 1, 2 * scale_for(image.shape[-2])), caption=f"class {names[cls]}")
    b.image(restyle_png(net, image, cls), caption=" · ".join(names))
