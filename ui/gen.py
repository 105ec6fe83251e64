"""Generation for the Generate page: cached per-class grids, live slider decodes, restyle, interpolation."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from cvae.generate import random_images, restyle, uniform_images
from ui.models import _model, scale_for, upscale


@st.cache_data(max_entries=64, show_spinner="Decoding…")
def grid_png(checkpoint: str, version: tuple[int, int], mode: str, label: int, n: int, span: float, seed: int) -> bytes:
    """A PNG of n×n images of class `label`: uniform latent grid or random codes."""
    net, _ = _model(checkpoint, version)
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
