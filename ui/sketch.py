"""A canvas to draw a digit on with the mouse, a pen or a finger: brush, eraser, Clear and (with a start
picture) Reset.

Our own st.components.v2 component, its HTML here and its script and style in static/sketch.js and
static/sketch.css: no build step, nothing fetched from outside (a classroom may be offline). It lives in the
page, not in an iframe, so a browser test drives it with the mouse like any element. After each stroke it
sends the canvas as a PNG; `sketch` turns that into an ink array once and keeps it in session state under
`<key>_ink`, where a test can put a drawing of its own (after the page's first run).
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import streamlit as st

from cvae.artifacts import grid_png

RESOLUTION = 280  # canvas pixels per side: 10 per pixel of a 28x28 digit
BRUSH = 22  # stroke width in canvas pixels: about 2 pixels of a 28x28 digit, as MNIST's pen strokes
MAX_PNG_BYTES = 2 << 20  # what a browser may send as one drawing (a 280x280 PNG is a few kB)
STATIC = Path(__file__).resolve().parent.parent / "static"
HTML = """<div class="sketch"><div class="pad"><canvas class="ink" aria-label="drawing canvas"></canvas>
<canvas class="veil"></canvas></div><div class="tools">
<button type="button" data-tool="brush">Brush</button><button type="button" data-tool="eraser">Eraser</button>
<button type="button" data-act="clear">Clear</button><button type="button" data-act="reset">Reset</button>
</div></div>"""

_canvas = st.components.v2.component(
    "cvae_sketch", html=HTML, css=(STATIC / "sketch.css").read_text(), js=(STATIC / "sketch.js").read_text()
)


def ink_from_png(url: str) -> np.ndarray | None:
    """A data URL of the canvas as (RESOLUTION, RESOLUTION) float32 ink in [0, 1] (the grey level: white
    ink is 1), or None for anything that is not such a PNG (it comes from a browser: checked, never trusted)."""
    from PIL import Image, UnidentifiedImageError

    head, _, body = url.partition(",")
    if head != "data:image/png;base64" or len(body) > MAX_PNG_BYTES * 4 // 3 + 4:
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(body, validate=True))) as picture:
            if picture.size != (RESOLUTION, RESOLUTION):
                return None
            grey = picture.convert("L")
    except (ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    return np.asarray(grey, dtype=np.float32) / 255.0


def sketch(key: str, *, start: np.ndarray | None = None, hidden: list[tuple[float, float, float, float]] = ()
           ) -> np.ndarray | None:  # fmt: skip
    """Draw the canvas (as wide as its column) and return the latest drawing, (RESOLUTION, RESOLUTION) float32
    ink in [0, 1], or None before the first stroke on this start picture. `start`: an (H, W) picture in
    [0, 1] to begin with (Reset goes back to it); `hidden`: rectangles (x0, y0, x1, y1), shares of the side,
    shown grey and never painted. A new start picture or new hidden parts begin a new drawing."""
    start_url = None
    if start is not None:
        png = grid_png(np.asarray(start, dtype=np.float32)[None, None], nrow=1, padding=0)
        start_url = "data:image/png;base64," + base64.b64encode(png).decode()
    hidden = [[float(v) for v in r] for r in hidden]
    token = hashlib.sha1(f"{start_url}|{hidden}".encode()).hexdigest()[:16]
    data = {"resolution": RESOLUTION, "brush": BRUSH, "start": start_url, "token": token, "hidden": hidden}
    png = _canvas(key=key, data=data, default={"png": None}, on_png_change=lambda: None).get("png")
    state = st.session_state
    if state.get(f"{key}_token") != token:  # a new start: the canvas repaints it, the last drawing is not its
        state[f"{key}_token"], state[f"{key}_png"], state[f"{key}_ink"] = token, png, None
    elif png and png != state.get(f"{key}_png"):  # a new stroke: decoded once, kept for the reruns
        state[f"{key}_png"], state[f"{key}_ink"] = png, ink_from_png(png)
    return state.get(f"{key}_ink")
