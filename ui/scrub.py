"""Sliders that change a picture while they move: every position is decoded ahead on the server into one
sprite sheet, and a small HTML page (no outside assets) shows the tile under the sliders on each `input`
event, in the browser, without waiting for a rerun. Streamlit's own sliders send their value only on release.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass

import numpy as np
import streamlit.components.v1 as components
import torch


@dataclass(frozen=True)
class Axis:
    """One slider: its label and the value shown at each position (the sprite's column or row index)."""

    label: str
    values: tuple[float, ...]
    start: int  # the position shown first


def sprite(images: torch.Tensor | np.ndarray, cols: int) -> bytes:
    """A PNG sheet of (N, C, H, W) images in [0, 1], `cols` per row, no padding (tile k at row k // cols)."""
    from PIL import Image

    x = torch.as_tensor(images).float().clamp(0, 1)
    n, c, h, w = x.shape
    rows = -(-n // cols)
    sheet = torch.ones(rows * cols, c, h, w)
    sheet[:n] = x
    grid = sheet.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)  # (rows*H, cols*W, C)
    array = grid.mul(255).round().byte().numpy()
    picture = Image.fromarray(array[..., 0] if c == 1 else array)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def page(png: bytes, tile: tuple[int, int], axes: list[Axis], size: int, caption: str = "",
         stacked: bool = False) -> str:  # fmt: skip
    """The HTML: a canvas `size` px wide and one range input per axis (axis 0 picks the column, axis 1 the row),
    beside it, or under it where `stacked` (in a narrow column)."""
    h, w = tile
    data = base64.b64encode(png).decode()
    height = round(size * h / w)
    inputs = "".join(
        f'<label for="s{i}">{a.label} = <b id="v{i}"></b></label>'
        f'<input type="range" id="s{i}" min="0" max="{len(a.values) - 1}" step="1" value="{a.start}">'
        for i, a in enumerate(axes)
    )
    values = json.dumps([[round(v, 3) for v in a.values] for a in axes])
    return f"""<!doctype html><html><head><style>
body {{ margin: 0; font: 16px "Source Sans", sans-serif; color: #1f2230; }}
.box {{ display: flex; gap: {16 if stacked else 28}px; align-items: flex-start;
        flex-direction: {"column" if stacked else "row"}; }}
canvas {{ width: {size}px; height: {height}px; image-rendering: pixelated; border: 1px solid #c8c8d0; }}
.controls {{ display: flex; flex-direction: column; gap: 6px; min-width: {size if stacked else 260}px; flex: 1; }}
input[type=range] {{ width: 100%; height: 28px; margin: 0 0 12px 0; accent-color: #d62728; }}
p {{ margin: 8px 0 0 0; }}
</style></head><body><div class="box">
<canvas id="c" width="{w}" height="{h}" role="img" aria-label="decoded image"></canvas>
<div class="controls">{inputs}<p>{caption}</p></div></div>
<script>
const values = {values}, tw = {w}, th = {h};
const canvas = document.getElementById("c"), ctx = canvas.getContext("2d");
const sliders = values.map((_, i) => document.getElementById("s" + i));
const sheet = new Image();
function draw() {{
  const col = +sliders[0].value, row = sliders.length > 1 ? +sliders[1].value : 0;
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, tw, th);
  ctx.drawImage(sheet, col * tw, row * th, tw, th, 0, 0, tw, th);
  sliders.forEach((s, i) => {{ document.getElementById("v" + i).textContent = values[i][+s.value].toFixed(2); }});
  canvas.dataset.tile = col + "," + row;
}}
sliders.forEach(s => s.addEventListener("input", draw));
sheet.onload = draw;
sheet.src = "data:image/png;base64,{data}";
</script></body></html>"""


def show(png: bytes, tile: tuple[int, int], axes: list[Axis], size: int = 280, caption: str = "",
         stacked: bool = False) -> None:  # fmt: skip
    """Draw the scrubber on the page (an iframe sized to fit): the controls beside the picture, or under it."""
    h, w = tile
    picture, controls = round(size * h / w), 90 * len(axes) + 40
    height = picture + 16 + controls if stacked else max(picture, controls)
    components.html(page(png, tile, axes, size, caption, stacked), height=height + 12)
