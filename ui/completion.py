"""The "Complete a digit" page's helpers: completion runs, their models, the test digits and the pictures."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from cvae import jobs
from cvae.config import DataConfig
from cvae.data import load_data
from cvae.generate import Completions, complete, given_text  # noqa: F401 - given_text is the page's
from cvae.model import CVAE
from ui.live import POLL_S, status_line
from ui.models import cached_model, upscale
from ui.runs import Run, open_run, open_runs, runs_root, stamp
from ui.train_form import launch

# The page's preset: the paper's 1-quadrant model, one epoch (docs/completion.md: distinct completions already).
PRESET = {"condition": "quadrants", "quadrants": 1, "epochs": 1}
SCALE = 6  # 28 px digits shown 168 px wide: readable from the back of a room


def completion_runs(root: Path) -> list[Run]:
    """Runs with condition quadrants, newest first: by their config.json, or by the flags the app queued them with."""
    return [run for run in open_runs(root) if run.completion or run.raw_config is None and
            jobs.launch_options(run.dir).get("condition") == "quadrants"]  # fmt: skip


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


@st.cache_resource(max_entries=1, show_spinner="Loading the test digits…")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The binarized MNIST test digits and their labels (read once per server), as completion runs see them."""
    data = load_data(DataConfig(dataset="MNIST", binarize="static", train_subset=1))
    return data.test_x, data.test_y


def pictures(net: CVAE, image: torch.Tensor, k: int, *, samples: int, seed: int) -> tuple[bytes, bytes, bytes]:
    """PNGs: the given part (hidden pixels grey), the baseline's prediction, a grid of CVAE samples."""
    done: Completions = complete(
        net, image, quadrants=k, samples=samples, generator=torch.Generator().manual_seed(seed)
    )
    grid = upscale(done.samples[:, None], nrow=4, scale=SCALE // 2)
    return upscale(done.given[None, None], 1, SCALE), upscale(done.baseline[None, None], 1, SCALE), grid


def walk(net: CVAE, image: torch.Tensor, k: int, t: float, seed: int) -> bytes:
    """One completion at z = mu(x) + t * std(x) * d, d one fixed draw of N(0, I) (seeded): the latent slider.

    t = 0 is the prior's mean; t = +-1 are two ordinary samples on opposite sides of it."""
    d = torch.randn(1, net.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    done = complete(net, image, quadrants=k, noise=t * d)
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
