"""The "Complete a digit" page's helpers: completion runs, their models, the test digits and the pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
import torch

from cvae import jobs
from cvae.artifacts import png_bytes
from cvae.config import DataConfig
from cvae.data import load_data
from cvae.drawing import fit_grid, model_input
from cvae.generate import Completions, complete, given_text  # noqa: F401 - given_text is the page's
from cvae.model import CVAE
from ui.live import POLL_S, status_line
from ui.models import cached_model, upscale
from ui.runs import Run, open_run, open_runs, runs_root, stamp
from ui.sidebar import meta
from ui.train_form import launch

# The page's preset: the paper's 1-quadrant model, one epoch (docs/completion.md: distinct completions already).
PRESET = {"condition": "quadrants", "quadrants": 1, "epochs": 1}
SCALE = 6  # 28 px digits shown 168 px wide: readable from the back of a room


def completion_runs(root: Path) -> list[Run]:
    """Runs with condition quadrants, newest first: by their config.json, or by the flags the app queued them with."""
    return [run for run in open_runs(root) if run.completion or run.raw_config is None and
            jobs.launch_options(run.dir).get("condition") == "quadrants"]  # fmt: skip


def picker_label(run: Run) -> str:
    """A completion run in the page's picker, what tells runs apart first, short enough for the box at 1280 px:
    'alice · 1 quadrant · z=32 · 1/1 epochs' (whose where sign-in is on, and the name a person gave it). Every
    such run completes MNIST digits, which the page says already."""
    given = f"{run.quadrants} quadrant{'s' * (run.quadrants != 1)}" if run.quadrants else "1-3 quadrants"
    z = ((run.raw_config or {}).get("model") or {}).get("latent_dim")
    epochs = f"{run.status.get('epoch') or 0}/{run.status.get('epochs') or '?'} epochs"
    name = meta(run.dir.path)["name"]
    return " · ".join(part for part in (run.owner, given, f"z={z}", epochs, name) if part)


def start_preset() -> None:
    """Queue the 1-quadrant preset in the runs folder and show it; a problem is one line on the page."""
    problem = launch(dict(PRESET))
    if problem:
        st.error(problem)
        return
    st.rerun()


def models(run: Run) -> CVAE:
    """The run's model (CVAE and baseline) from its latest checkpoint; raises CVAEError."""
    path = run.dir.latest_checkpoint
    return cached_model(str(path), stamp(path))[0]


@st.cache_resource(max_entries=2, show_spinner="Loading the test digits…")
def digits(grey: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test digits and their labels (read once per server), as completion runs see them: binarized,
    or grey for a run trained on grey digits (`--binarize none`)."""
    data = load_data(DataConfig(dataset="MNIST", binarize="none" if grey else "static", train_subset=1))
    return data.test_x, data.test_y


SPREAD_DRAWS = 64  # completions the spread map is measured over (the first ones are shown)


def given_part(net: CVAE, image: torch.Tensor, k: int) -> np.ndarray:
    """(H, W): the test digit's first k quadrants, the rest black: the drawing the canvas starts from."""
    given = image * net.quadrant_masks[k - 1].view_as(image)
    return given.reshape(net.config.height, net.config.width).numpy()


def hidden_rects(net: CVAE, k: int) -> list[tuple[float, float, float, float]]:
    """The quadrants hidden when k are given, as rectangles (x0, y0, x1, y1) in shares of the side: from the
    model's own masks, so the canvas greys out what the model will not see."""
    given = net.quadrant_masks[k - 1].view(net.config.height, net.config.width)
    h, w = given.shape[0] // 2, given.shape[1] // 2
    return [(left / 2, top / 2, left / 2 + 0.5, top / 2 + 0.5) for top in (0, 1) for left in (0, 1)
            if not given[top * h : (top + 1) * h, left * w : (left + 1) * w].any()]  # fmt: skip


def drawn_input(net: CVAE, ink: np.ndarray | None, start: np.ndarray) -> torch.Tensor:
    """The model's input (1, H, W) from the canvas: the drawing scaled to the model's grid (nothing moved: the
    quadrants are places), binarized as the model's digits were; the start picture before any stroke."""
    c = net.config
    return model_input(net, start if ink is None else fit_grid(ink, (c.height, c.width)))


def pictures(net: CVAE, x: torch.Tensor, k: int, *, samples: int, seed: int) -> tuple[bytes, bytes, bytes]:
    """PNGs: the baseline's prediction, a grid of `samples` CVAE completions, and the per-pixel spread (std)
    of SPREAD_DRAWS completions, of the first k quadrants of x."""
    done: Completions = complete(
        net, x, quadrants=k, samples=max(samples, SPREAD_DRAWS), generator=torch.Generator().manual_seed(seed)
    )
    grid = upscale(done.samples[:samples, None], nrow=4, scale=SCALE // 2)
    return upscale(done.baseline[None, None], 1, SCALE), grid, spread_png(done.spread)


def spread_png(spread: torch.Tensor) -> bytes:
    """A per-pixel std map (H, W) in a colour map (black 0, light yellow 0.5, the most a pixel probability's
    std can be), so it does not read as a digit."""
    from matplotlib import colormaps

    rgb = colormaps["magma"](np.clip(spread.numpy() / 0.5, 0, 1))[..., :3]  # (H, W, 3)
    return png_bytes((rgb * 255).round().astype(np.uint8), scale=SCALE)


def walk(net: CVAE, x: torch.Tensor, k: int, t: float, seed: int) -> bytes:
    """One completion at z = mu(x) + t * std(x) * d, d one fixed draw of N(0, I) (seeded): the latent slider.

    t = 0 is the prior's mean; t = +-1 are two ordinary samples on opposite sides of it."""
    d = torch.randn(1, net.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    done = complete(net, x, quadrants=k, noise=t * d)
    return upscale(done.samples[:, None], 1, SCALE)


def wait_for_first_epoch(run: Run) -> None:
    """The newest completion run's progress, refreshed by itself; the page redraws once its first checkpoint
    is there (nobody has to press anything)."""

    def panel() -> None:
        fresh = open_run(runs_root(), run.id)
        if fresh.dir.latest_checkpoint.is_file() or fresh.active != run.active:
            st.rerun()  # its first epoch is in (or it ended): the page draws the model
        status_line(fresh)

    panel.__qualname__ = f"wait_for_first_epoch.{run.id.encode().hex()[:24]}"
    st.fragment(run_every=POLL_S if run.active else None)(panel)()
