"""Showing one test image and what the model makes of it (latent-plot clicks, Generate page)."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from cvae.errors import CVAEError
from ui import plots
from ui.models import model, model_at, scale_for, test_images, upscale
from ui.runs import Run


def model_or_message(run: Run):
    """(model, epoch) of the latest checkpoint, or None with a message on the page."""
    if not run.dir.latest_checkpoint.is_file():
        st.info("No checkpoint yet: the model is saved when the first epoch ends." if run.active
                else "This run has no checkpoint (it ended before its first epoch finished).")  # fmt: skip
        return None
    try:
        return model(run)
    except CVAEError as err:
        st.error(f"Cannot load the model: {err}")
        return None


@torch.no_grad()
def show_reconstruction(run: Run, index: int, epoch: int | None = None) -> None:
    """Test image `index` beside its mean reconstruction by the model of `epoch` (the one on screen when the
    dot was clicked) when its checkpoint was kept, else by the latest checkpoint; the caption says which."""
    loaded = model_or_message(run)
    if loaded is None:
        return
    if epoch is not None:
        try:
            loaded = model_at(run, epoch)
        except CVAEError as err:
            st.error(f"Cannot load the model of epoch {epoch}: {err}")
            return
    net, decoded_by = loaded
    try:
        x, y = test_images(run, index + 1)
    except CVAEError as err:
        st.error(f"Cannot load the test images: {err}")
        return
    if index >= len(x):
        st.warning(f"There is no test image #{index}.")
        return
    image, label = torch.from_numpy(x[index : index + 1]), torch.from_numpy(y[index : index + 1])
    recon = net.generate(net.encode(image, label).mu, label)
    scale = max(2, scale_for(image.shape[-2]) * 2)
    names = run.class_names
    a, b = st.columns(2)
    name = names[int(label)] if names else int(label)
    a.image(upscale(image, 1, scale), width="stretch", caption=f"#{index} · class {name}", output_format="PNG")
    b.image(
        upscale(recon, 1, scale), width="stretch", caption=f"reconstructed, epoch {decoded_by}", output_format="PNG"
    )
    if epoch is not None and decoded_by != epoch:
        st.caption(f"No checkpoint was kept for epoch {epoch} (one every {_every(run)} epochs, and the last): "
                   f"decoded by the model of epoch {decoded_by}.")  # fmt: skip


def _every(run: Run) -> int:
    return run.config.train.checkpoint_every if run.config else 20


def held_epochs(run: Run, epochs: list[int], z: np.ndarray, take_new: bool) -> tuple[list[int], np.ndarray]:
    """The epochs the latent plot shows: while the run trains, the ones already on screen (a rerun for a click
    must draw the same figure, or the browser drops the selection) unless `take_new`; otherwise all."""
    held = st.session_state.get("latent_shown")
    if run.active and not take_new and held and held[0] == run.id and held[1] in epochs:
        k = epochs.index(held[1]) + 1
        epochs, z = epochs[:k], z[:k]
    st.session_state["latent_shown"] = (run.id, epochs[-1])
    return epochs, z


def remembered_pick(run: Run, fig, picked: list[dict]) -> tuple[int, int | None] | None:
    """(test image index, epoch on screen) of the dot clicked in the latent plot, kept for the run until another
    dot is clicked: redrawing the plot for a new epoch clears the browser's selection, not the picture."""
    if picked:
        data = picked[0]["customdata"]
        st.session_state["latent_pick"] = (run.id, int(data[0] if isinstance(data, list) else data),
                                           plots.epoch_of_point(fig, picked[0]))  # fmt: skip
    kept = st.session_state.get("latent_pick")
    return (kept[1], kept[2]) if kept and kept[0] == run.id else None
