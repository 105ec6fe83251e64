"""Showing one test image and what the model makes of it (latent-plot clicks, Generate page)."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from cvae.errors import CVAEError
from ui import plots
from ui.models import decoder_at, model, model_at, scale_for, test_images, upscale
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
def reconstruction(run: Run, index: int, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(test image `index`, its mean reconstruction, the epoch whose model made it). With `epoch` (the one on
    screen when the dot was clicked): the point's own code of that epoch (latent.npy) decoded by that
    epoch's decoder; without, or for a run that kept neither, the latest model encodes and decodes it.
    Raises CVAEError, or IndexError for an image that is not there."""
    loaded = model(run) if epoch is None else decoder_at(run, epoch)
    net, decoded_by = loaded
    x, y = test_images(run, index + 1)
    if index >= len(x):
        raise IndexError(index)
    image, label = torch.from_numpy(x[index : index + 1]), torch.from_numpy(y[index : index + 1])
    z = None
    if epoch is not None and decoded_by == epoch:
        try:
            codes = np.load(run.dir.artifact(epoch, "latent.npy"), allow_pickle=False)
            if codes.ndim == 2 and index < len(codes) and codes.shape[1] == net.config.latent_dim:
                z = torch.from_numpy(np.array(codes[index : index + 1], dtype=np.float32))
        except (OSError, ValueError):
            z = None
    if z is None:  # not a point of the latent subset, or no codes kept: encode it with the model we have
        net, decoded_by = model(run) if epoch is None or decoded_by != epoch else model_at(run, epoch)
        z = net.encode(image, label).mu
    return image, net.generate(z, label), decoded_by


def show_reconstruction(run: Run, index: int, epoch: int | None = None) -> None:
    """Test image `index` beside its mean reconstruction by the model of `epoch` (the one on screen when the
    dot was clicked); the caption says which epoch's model made it."""
    if model_or_message(run) is None:
        return
    try:
        image, recon, decoded_by = reconstruction(run, index, epoch)
    except CVAEError as err:
        st.error(f"Cannot decode this image: {err}")
        return
    except IndexError:
        st.warning(f"There is no test image #{index}.")
        return
    _, label = test_images(run, index + 1)
    scale = max(2, scale_for(image.shape[-2]) * 2)
    names = run.class_names
    a, b = st.columns(2)
    name = names[int(label[index])] if names else int(label[index])
    a.image(upscale(image, 1, scale), width="stretch", caption=f"#{index} · class {name}", output_format="PNG")
    b.image(
        upscale(recon, 1, scale), width="stretch", caption=f"reconstructed, epoch {decoded_by}", output_format="PNG"
    )
    if epoch is not None and decoded_by != epoch:
        st.caption(f"This run kept no model of epoch {epoch} (runs from before every epoch kept its decoder): "
                   f"decoded by the model of epoch {decoded_by}.")  # fmt: skip


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
