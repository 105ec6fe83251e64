"""The "Complete a digit" page's helpers: completion runs, their models, the test digits and the pictures."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from cvae import jobs
from cvae.completion import QUADRANT_ORDER, CompletionModels, Completions, complete, load_models, test_digits
from cvae.errors import CVAEError
from cvae.runs import read_json
from ui.auth import current_user
from ui.models import upscale
from ui.runs import Run, open_runs, stamp
from ui.sidebar import select

# The page's preset: the paper's 1-quadrant model, one epoch (docs/completion.md: distinct completions already).
PRESET = {"condition": "quadrants", "quadrants": 1, "epochs": 1}
SCALE = 6  # 28 px digits shown 168 px wide: readable from the back of a room


def completion_runs(root: Path) -> list[Run]:
    """Runs with condition quadrants (their config.json says so), newest first."""
    return [run for run in open_runs(root)
            if run.completion or run.raw_config is None and _launched_as_completion(run)]  # fmt: skip


def _launched_as_completion(run: Run) -> bool:
    """A run the app queued with condition quadrants that has not written its config.json yet."""
    argv = (read_json(run.dir.path / jobs.LAUNCH_FILE) or {}).get("argv")
    pairs = zip(argv[:-1], argv[1:], strict=True) if isinstance(argv, list) and argv else ()
    return ("--condition", "quadrants") in pairs


def start_preset(root: Path) -> None:
    """Queue the 1-quadrant preset and show it; a problem is one line on the page."""
    try:
        run = jobs.start(root, dict(PRESET), owner=current_user(), data_roots=jobs.data_roots())
    except (CVAEError, OSError) as err:
        st.error(f"Could not start the run: {jobs.explain(err) if isinstance(err, OSError) else err}")
        return
    select(run.id)
    st.rerun()


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _models(checkpoint: str, version: tuple[int, int]) -> CompletionModels:
    torch.set_num_threads(1)  # the app shares the machine with training runs
    return load_models(checkpoint)


def models(run: Run) -> CompletionModels:
    """The run's CVAE and baseline from its latest checkpoint; raises CVAEError."""
    path = run.dir.latest_checkpoint
    return _models(str(path), stamp(path))


@st.cache_resource(max_entries=1, show_spinner="Loading the test digits…")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The binarized MNIST test digits and their labels (read once per server)."""
    return test_digits()


def given_text(k: int) -> str:
    return ", ".join(QUADRANT_ORDER[:k]) + (" quadrant" if k == 1 else " quadrants")


def pictures(
    net: CompletionModels, image: torch.Tensor, k: int, *, samples: int, seed: int
) -> tuple[bytes, bytes, bytes]:
    """PNGs: the given part (hidden pixels grey), the baseline's prediction, a grid of CVAE samples."""
    done: Completions = complete(
        net, image, quadrants=k, samples=samples, generator=torch.Generator().manual_seed(seed)
    )
    grid = upscale(done.samples[:, None], nrow=4, scale=SCALE // 2)
    return upscale(done.given[None, None], 1, SCALE), upscale(done.baseline[None, None], 1, SCALE), grid


def walk(net: CompletionModels, image: torch.Tensor, k: int, t: float, seed: int) -> bytes:
    """One completion at z = mu(x) + t * std(x) * d, d one fixed draw of N(0, I) (seeded): the latent slider.

    t = 0 is the prior's mean; t = +-1 are two ordinary samples on opposite sides of it."""
    d = torch.randn(1, net.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    done = complete(net, image, quadrants=k, noise=t * d)
    return upscale(done.samples[:, None], 1, SCALE)
