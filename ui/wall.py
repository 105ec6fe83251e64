"""The class wall: every run as a small card, for a lecturer's projector (app_pages/wall.py).

A card holds the run's name (and owner, where sign-in is on), its test −ELBO and state, a small curve, a
crop of its newest reconstructions and the settings that set it apart from most runs on the wall
(cvae.names.apart_from_most, the plain words of `what_differs`). The wall is one block of HTML: thirty cards as thirty sets of Streamlit elements
(a chart each) would cost the server and the projector's browser far more on every refresh. Everything on a
card comes from the run folder through the readers of ui.runs, cached by the files' stamps, so a refresh
re-reads only what a trainer changed; the pictures are small PNG crops, made once per new picture.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import streamlit as st

from cvae.names import apart_from_most
from ui import plots
from ui.runs import STATE_COLORS, Run, batches_versioned, metrics, newest_pictures, runs_root, stamp
from ui.sidebar import display_name

CROP = (4, 3)  # columns and rows of the reconstruction grid shown on a card: digits at their own size
STATE_INK = {"gray": "#4a4d5a", "blue": "#1b5fb4", "orange": "#a45200", "green": "#1d7a35", "red": "#b3261e"}
SINCE = {"lecture": "past 3 h", "today": "past 24 h", "all": "all runs"}  # short: the three fit their column at 1280 px


@dataclass(frozen=True)
class Card:
    run_id: str
    name: str
    owner: str | None
    state: str
    state_text: str
    epochs: str  # "3/12"
    nelbo: float | None  # the last finished epoch's test −ELBO
    curve: tuple[float, ...]  # test −ELBO per epoch, or (in the first epochs) the smoothed batch loss
    per_epoch: bool
    picture: str | None  # a data: URL of the reconstructions' crop
    differs: str
    color: str


def started_at(run: Run) -> float:
    """When the run was started (its config's time, else its queue time, else its folder's), for "since"."""
    for value in ((run.raw_config or {}).get("created"), run.status.get("queued_at"), run.status.get("started")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    try:
        return run.dir.path.stat().st_mtime
    except OSError:
        return 0.0


def since(runs: list[Run], choice: str, now: float | None = None) -> list[Run]:
    """The runs started in the chosen span: the last 3 hours (a lecture), the last 24 hours or all. Spans end now
    rather than at midnight, so an evening lecture's runs stay on its wall past twelve."""
    now = time.time() if now is None else now
    hours = {"lecture": 3, "today": 24}.get(choice)
    return runs if hours is None else [r for r in runs if started_at(r) >= now - hours * 3600]


def cards(runs: list[Run], owners: bool) -> tuple[list[Card], list[str]]:
    """One card per run (newest first, as given), and the settings most of them share in plain words; `owners`:
    say whose run each is (sign-in on)."""
    root = runs_root()
    usual, differs = _differs(tuple((r.id, stamp(r.dir.config_path)) for r in runs), runs)
    colors = plots.run_colors([r.id for r in runs])
    found = []
    for run in runs:
        rows = metrics(run.dir)
        nelbo = rows[-1].get("test_nelbo") if rows else None
        epoch, total = run.status.get("epoch") or 0, run.status.get("epochs")
        found.append(Card(
            run_id=run.id, name=display_name(root, run.id), owner=run.owner if owners else None, state=run.state,
            state_text=run.state_text, epochs=f"epoch {epoch}/{total}" if total and run.state != "queued" else "",
            per_epoch=len(rows) >= 2,
            nelbo=nelbo if isinstance(nelbo, (int, float)) else None, curve=_curve(run, rows),
            picture=_picture(run), color=colors[run.id],
            # a queued run is set apart by the options it was queued with; one without them says what it trains
            differs=differs.get(run.id, run.description),
        ))  # fmt: skip
    return found, usual


def _differs(key: tuple, runs: list[Run]) -> tuple[list[str], dict[str, str]]:
    """What most runs on the wall share, and what sets each run apart from them, in plain words; a queued run,
    which has no config.json yet, by the config its options will make (`_planned`)."""
    configured = [r for r in runs if r.raw_config]
    planned = {r.id: _planned(r, configured[0].raw_config) for r in runs if not r.raw_config and configured}
    configs = {**{r.id: r.raw_config for r in configured}, **{i: c for i, c in planned.items() if c is not None}}
    if len(configs) < 2:
        return [], {}
    return _differs_cached(key, tuple(configs), list(configs.values()))


def _planned(run: Run, base: dict) -> dict | None:
    """The config a queued run will write, as far as its queued options say: those over `base` (a configured run
    of the wall) for the fields that come from the data. None where the options are missing or do not resolve."""
    sections = run.planned_sections
    if sections is None:
        return None
    return {k: {**(base.get(k) or {}), **v} for k, v in sections.items()}


@st.cache_data(max_entries=16, show_spinner=False)
def _differs_cached(key: tuple, ids: tuple[str, ...], _configs: list[dict]) -> tuple[list[str], dict[str, str]]:
    usual, apart = apart_from_most([{k: c.get(k) or {} for k in ("data", "model", "train")} for c in _configs])
    return usual, dict(zip(ids, apart, strict=True))


def _curve(run: Run, rows: list[dict]) -> tuple[float, ...]:
    """Test −ELBO per finished epoch once there are two; before, the batch loss so far (smoothed)."""
    if len(rows) >= 2:
        return tuple(float(v) for r in rows if isinstance(v := r.get("test_nelbo"), (int, float)))
    batches, version = batches_versioned(run.dir)
    return _batch_curve(str(run.dir.batches_path), (version[0], len(batches)), batches)


@st.cache_data(max_entries=128, show_spinner=False)
def _batch_curve(path: str, version: tuple, _rows: list[dict]) -> tuple[float, ...]:
    loss = np.array([r.get("loss") if r.get("loss") is not None else np.nan for r in _rows], dtype=float)
    smooth = plots.ema(loss, 0.9)
    keep = np.linspace(0, len(smooth) - 1, min(len(smooth), 60)).round().astype(int) if len(smooth) else []
    return tuple(float(smooth[i]) for i in keep if np.isfinite(smooth[i]))


def _picture(run: Run) -> str | None:
    shown = newest_pictures(run.dir, run.active)
    return None if shown is None else _crop(str(shown["recon"]), stamp(shown["recon"]))


@st.cache_data(max_entries=256, show_spinner=False)
def _crop(path: str, version: tuple[int, int]) -> str | None:
    """The top-left CROP images of a reconstruction grid (8 a row, 2 px apart: cvae.artifacts.grid_png), as a
    data: URL; None for a missing or unreadable picture."""
    from PIL import Image

    try:
        with Image.open(path) as grid:
            grid.load()
            tile = (grid.width - 2) // 8  # one image and its gap
            crop = grid.crop((0, 0, 2 + CROP[0] * tile, 2 + CROP[1] * tile))
    except (OSError, ValueError):
        return None
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def sparkline(values: tuple[float, ...], color: str, scale: list[float] | None = None, width: int = 92,
              height: int = 84) -> str:  # fmt: skip
    """An SVG line of `values` as a data: URL, lower is better; on the y range `scale` (points beyond it drawn at
    its edge), else on the values' own."""
    lo, hi = scale or (min(values, default=0.0), max(values, default=1.0))
    y = [4 + (hi - min(max(v, lo), hi)) / ((hi - lo) or 1.0) * (height - 8) for v in values]
    points = " ".join(f"{3 + i * (width - 6) / max(1, len(values) - 1):.1f},{v:.1f}" for i, v in enumerate(y))
    line = f"<polyline points='{points}' fill='none' stroke='{color}' stroke-width='3' stroke-linejoin='round'/>"
    svg = (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}'><rect width='100%' "
           f"height='100%' rx='4' fill='#f4f5f8'/>{line if len(values) > 1 else ''}</svg>")  # fmt: skip
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def card_html(card: Card, scale: list[float] | None = None) -> str:
    """One card: every text escaped (names are what people typed). `scale`: the y range of the per-epoch curves."""
    e = html.escape
    ink = STATE_INK.get(STATE_COLORS.get(card.state, "gray"), "#4a4d5a")
    number = f"{card.nelbo:.1f}" if card.nelbo is not None else "–"
    who = f"{e(card.owner)} · " if card.owner else ""
    picture = f"<img src='{card.picture}' alt='reconstructions'>" if card.picture else "<i>no pictures yet</i>"
    kind = "test −ELBO per epoch, on the scale of every card's" if card.per_epoch else "batch loss so far (smoothed)"
    return (
        f"<a class='card' href='./?run={e(quote(card.run_id))}' target='_self' style='border-top-color:{card.color}' "
        f"title='{e(card.name)}: {e(card.differs) or 'no setting differs'}'>"
        f"<div class='head'><span class='name'>{e(card.name)}</span><span class='nelbo'>{number}</span></div>"
        f"<div class='state'>{who}<b style='color:{ink}'>{e(card.state_text)}</b> {e(card.epochs)}</div>"
        f"<div class='pics'><img class='spark' src='{sparkline(card.curve, card.color, scale if card.per_epoch else None)}' alt='{kind}' "
        f"title='{kind}'>{picture}</div>"
        f"<div class='differs'>{e(card.differs) or 'as most runs'}</div></a>"
    )  # fmt: skip


STYLE = """<style>
.wall {display: grid; grid-template-columns: repeat(auto-fill, minmax(218px, 1fr)); gap: 10px;}
.wall .card {display: block; border: 1px solid #c9ccd6; border-top: 6px solid; border-radius: 8px; padding: 4px 8px 5px;
  color: #1f2230; text-decoration: none; background: #fff; font-size: 16px; line-height: 1.35; overflow: hidden;}
.wall .card:hover {box-shadow: 0 0 0 2px #8a8fa3;}
.wall .head {display: flex; justify-content: space-between; gap: 6px; font-weight: 700; font-size: 17px;}
.wall .name {white-space: nowrap; overflow: hidden; text-overflow: ellipsis;}
.wall .nelbo {font-variant-numeric: tabular-nums;}
.wall .state, .wall .differs {white-space: nowrap; overflow: hidden; text-overflow: ellipsis;}
.wall .pics {display: flex; align-items: center; justify-content: space-between; gap: 4px; height: 84px;
  margin: 2px 0;}
.wall .pics img {height: 84px; image-rendering: pixelated;}
.wall .pics .spark {width: 92px; image-rendering: auto;}
.wall .pics i {color: #4a4d5a;}
</style>"""


def wall_html(found: list[Card]) -> str:
    """The cards as one grid. The per-epoch curves share one y range (a lower line is a better run), which a
    run far worse than the rest does not squash: the top is the 95th percentile."""
    every = np.array([v for c in found if c.per_epoch for v in c.curve], dtype=float)
    scale = plots.robust_range(every, skip=0.0, lo_q=0, hi_q=95)
    return STYLE + "<div class='wall'>" + "".join(card_html(c, scale) for c in found) + "</div>"
