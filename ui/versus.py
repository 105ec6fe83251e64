"""VAE vs CVAE on the latent page: a plain VAE's latent space (condition none) beside the picked CVAE's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from ui import plots
from ui.runs import Run, latents, open_runs

WHY = ("**Why they differ:** the VAE is not given the label, so z must say which digit it is, and its classes form "
       "clusters; the CVAE is given the label, so z only has to hold the style (slant, width), and its classes "
       "mix.")  # fmt: skip


def vae_runs(root: Path) -> list[Run]:
    """Runs with condition none that have saved latent codes, newest first."""
    return [run for run in open_runs(root) if run.config is not None and run.config.model.condition == "none"
            and run.dir.epochs_with("latent.npy")]  # fmt: skip


def show_beside(run: Run, z: np.ndarray, labels: np.ndarray, names: list[str], vaes: list[Run]) -> None:
    """The CVAE's last epoch (z: (N, Z) means) beside a chosen VAE's, with the one line that explains them."""
    vae = vaes[
        st.selectbox("Plain VAE run", range(len(vaes)), format_func=lambda i: vaes[i].label, key="latent_vae_run")
    ]
    try:
        epochs, vz, vlabels = latents(vae.dir)
    except (OSError, ValueError) as err:
        st.error(f"The latent codes of {vae.id} cannot be read: {err}")
        return
    left, right = st.columns(2)
    cvae_fig = plots.latent_snapshot(z, labels, names, f"CVAE, label given<br><sup>{run.id}</sup>")
    vae_fig = plots.latent_snapshot(vz[-1], vlabels, names, f"VAE, no label<br><sup>{vae.id}</sup>", legend=True)
    left.plotly_chart(cvae_fig, key="latent_cvae_still", config={"displayModeBar": False})
    right.plotly_chart(vae_fig, key="latent_vae_still", config={"displayModeBar": False})
    st.markdown(WHY)
