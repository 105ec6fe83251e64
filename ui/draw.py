"""The Draw page's helpers: what the model makes of a drawing (cached), its reconstructions under every class
with the encoding class framed, and the run's latent scatter with the drawing marked."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from cvae.artifacts import grid_pixels, png_bytes
from cvae.drawing import DigitReading, read_digit
from ui import plots
from ui.runs import Run, latents

ROW = 5  # reconstructions per row: the ten classes in two rows, each tile big enough for a projector
MARK = "#d62728"  # the app's red (primaryColor): the drawing in the scatter, the frame of its class's tile
FRAME = tuple(int(MARK[i : i + 2], 16) for i in (1, 3, 5))  # the same red as RGB


@st.cache_data(max_entries=64, show_spinner="Reading your digit…")
def reading(checkpoint: str, version: tuple[int, int], _net, x: np.ndarray, label: int | None) -> DigitReading:
    """`cvae.drawing.read_digit` for one drawn input, cached per model, input and class."""
    return read_digit(_net, torch.from_numpy(x), label=label)


def classes_png(images: torch.Tensor, framed: int | None, scale: int = 3) -> bytes:
    """The reconstructions (K, C, H, W) in rows of ROW, the one of class `framed` in a red frame."""
    pad = 3
    pixels = grid_pixels(images, nrow=min(ROW, len(images)), padding=pad)
    if framed is not None:
        h, w = images.shape[-2:]
        top, left = pad + (framed // ROW) * (h + pad), pad + (framed % ROW) * (w + pad)
        pixels[top - pad : top + h + pad, left - pad : left + w + pad] = FRAME
        tile = grid_pixels(images[framed : framed + 1], nrow=1, padding=0)
        pixels[top : top + h, left : left + w] = tile
    return png_bytes(pixels, scale=scale)


def latent_figure(run: Run, mu: np.ndarray, label: int | None, names: list[str]) -> go.Figure | None:
    """The run's test images at their posterior means (its last epoch's latent.npy, as the Latent page draws
    them) and the drawing's mean as a big red ring; None if the run kept no latent codes."""
    try:
        _, z, labels = latents(run.dir)
    except (OSError, ValueError):
        return None
    if not len(z) or not len(labels) or z.shape[-1] != len(mu):
        return None
    fig = plots.latent_snapshot(z[-1], labels, names, "", legend=True, height=420)
    to_plane, note = plots.projection(z[-1])
    x, y = to_plane(mu[None].astype(np.float64))[0]
    if len(mu) == 1:  # a 1-D z is spread by class vertically
        y = label if label is not None else (len(names) - 1) / 2
    # A red ring with a dot, open where every class's marker is a filled shape: it reads as none of them.
    fig.add_scatter(x=[x], y=[y], mode="markers", name="your digit", hoverinfo="name",
                    marker=dict(symbol="circle-open-dot", size=34, color=MARK, line=dict(width=5)))  # fmt: skip
    for axis, value in ((fig.layout.xaxis, x), (fig.layout.yaxis, y)):  # keep the ring on the plot
        lo, hi = axis.range
        span = (hi - lo) * 0.06
        axis.range = [min(lo, value - span), max(hi, value + span)]
    fig.update_layout(title=dict(text=note, font=dict(size=14)), margin=dict(l=10, r=10, t=30 if note else 10, b=10),
                      legend=dict(title=None, font=plots.FONT, itemwidth=30, x=1.0, y=1))  # fmt: skip
    return fig
