"""Download for slides: the chart or image grid on a page as the library draws it for a projector (cvae.figures,
the same as `cvae export`): a 1280x720 PNG and SVG captioned with the run, the epoch, the seed and the commands
that remake it; the latent animation as a GIF.

A figure is drawn only when its button is clicked (Streamlit calls the button's function then, on a thread of its
own, and the page does not rerun), and kept in a cache keyed by the stamps of the files it is drawn from: a page
renders as fast as without the buttons, and a second click, or a classmate's, gets the same bytes at once.
"""

from __future__ import annotations

import functools
from pathlib import Path

import streamlit as st

from cvae import figures
from ui.runs import Run, stamp

LABELS = {"png": "PNG", "svg": "SVG", "gif": "GIF"}


@st.cache_data(max_entries=32, show_spinner=False)
def _drawn(folder: str, version: tuple, request: figures.Export, fmt: str, where: str) -> bytes:
    return figures.export(folder, request, (fmt,), where)[fmt]


def _draw(folder: str, request: figures.Export, fmt: str, where: str) -> bytes:
    """On a click: the figure, drawn from the run's files as they are now (or from the cache while unchanged)."""
    version = tuple(stamp(path) for path in figures.inputs(folder, request))
    return _drawn(folder, version, request, fmt, where)


def shown_path(folder: Path) -> str:
    """The run folder as the caption's commands name it: relative to where the app runs when it is inside
    (checkpoints/<run>), else in full."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def download(run: Run, figures_shown: list[tuple[str, figures.Export]], key: str) -> None:
    """A compact "For slides" button that opens, per figure (its title, what to draw), its download buttons and
    the command that draws it from a shell."""
    where = shown_path(run.dir.path)
    with st.popover("For slides", icon=":material/slideshow:"):  # a tooltip would hide the popover's first lines
        st.caption("1280×720 pictures, captioned with this run, the epoch, the seed and the commands that make them "
                   "again.")  # fmt: skip
        for i, (title, request) in enumerate(figures_shown):
            st.markdown(f"**{title}**")
            with st.container(horizontal=True):
                for fmt in request.formats():
                    st.download_button(
                        LABELS[fmt], functools.partial(_draw, str(run.dir.path), request, fmt, where),
                        request.filename(run.id, fmt), figures.MIME[fmt], key=f"{key}_{i}_{fmt}", on_click="ignore",
                        icon=":material/download:",
                    )  # fmt: skip
            st.caption(f"`{request.command(where)}`")
