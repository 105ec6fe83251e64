"""Cached models and test images, and turning image tensors into PNGs for the page."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from cvae.artifacts import decoder_source, grid_png, load_decoder
from cvae.config import DataConfig
from cvae.data import load_data
from cvae.generate import load_run
from cvae.model import CVAE
from ui.runs import Run, stamp


@st.cache_resource(max_entries=6, show_spinner="Loading the model…")
def cached_model(checkpoint: str, version: tuple[int, int]) -> tuple[CVAE, int]:
    torch.set_num_threads(1)  # the app shares the machine with training runs
    loaded = load_run(checkpoint)
    return loaded.model, int(loaded.checkpoint.get("epoch", 0))


def model(run: Run) -> tuple[CVAE, int]:
    """The run's latest checkpoint in eval mode, and its epoch; raises CVAEError."""
    path = run.dir.latest_checkpoint
    return cached_model(str(path), stamp(path))


def model_at(run: Run, epoch: int) -> tuple[CVAE, int]:
    """The model as it was after `epoch` when that epoch's checkpoint was kept, else the latest one (the epoch
    returned says which); raises CVAEError."""
    path = run.dir.epoch_checkpoint(epoch)
    if not path.is_file():
        return model(run)
    return cached_model(str(path), stamp(path))


@st.cache_resource(max_entries=4, show_spinner="Loading the epoch's decoder…")
def _with_decoder(checkpoint: str, version: tuple[int, int], decoder: str, decoder_version: tuple[int, int]) -> CVAE:
    net = copy.deepcopy(cached_model(checkpoint, version)[0])
    net.decoder.load_state_dict(load_decoder(Path(decoder), net))
    return net


def decoder_at(run: Run, epoch: int) -> tuple[CVAE, int]:
    """A model whose decoder is the one of `epoch` (the encoder may be a later one: decode that epoch's own
    latent codes with it), and the epoch it decodes as (`cvae.artifacts.decoder_source` says where from; a run
    from before every epoch kept its decoder gives its latest model). Raises CVAEError."""
    where = decoder_source(run.dir, epoch)
    if where.decoder is None:
        return model_at(run, epoch) if where.exact else model(run)
    checkpoint, decoder = where.checkpoint, where.decoder
    return _with_decoder(str(checkpoint), stamp(checkpoint), str(decoder), stamp(decoder)), epoch


@st.cache_data(max_entries=4, show_spinner="Loading test images…")
def _test_images(data_config: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_data(DataConfig(**json.loads(data_config)))
    return data.test_x[:count].numpy(), data.test_y[:count].numpy()


def test_images(run: Run, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` test images (N, C, H, W) as the model saw them, and labels; raises CVAEError."""
    assert run.config is not None
    cfg = run.config.data.__dict__
    return _test_images(json.dumps(cfg, sort_keys=True), count)


def upscale(images: torch.Tensor | np.ndarray, nrow: int = 8, scale: int = 3, padding: int = 2) -> bytes:
    """A PNG of an image grid, (N, C, H, W) in [0, 1], enlarged with sharp pixels for a projector."""
    return grid_png(images, nrow=nrow, padding=padding, scale=scale)


@st.cache_data(max_entries=256, show_spinner=False)
def _png_file(path: str, version: tuple[int, int], scale: int) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as picture:
            picture.load()
            big = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    except (OSError, ValueError):
        return None  # missing or half-written: the caller says so
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    return buffer.getvalue()


def png_file(path: Path, scale: int = 2) -> bytes | None:
    """An artifact PNG enlarged with sharp pixels, or None if it cannot be read."""
    return _png_file(str(path), stamp(path), scale)


def scale_for(height: int) -> int:
    """Enlargement that makes a grid of 8 images about 500 px wide."""
    return max(1, min(6, round(480 / (8 * (height + 2)))))
