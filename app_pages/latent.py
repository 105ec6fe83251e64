"""Latent space: where the encoder puts the test images, epoch by epoch."""

import streamlit as st

from ui import plots
from ui.pick import show_reconstruction
from ui.runs import latents, open_run, runs_root
from ui.sidebar import current_run, require_config

st.title(":material/scatter_plot: Latent space")
st.caption("Each dot is one test image, placed at the mean of its code q(z | x, y). Press **Play** to watch the "
           "space organise over the epochs. Click a dot to see that image and its reconstruction.")  # fmt: skip
run = current_run()
if run is None or not require_config(run):
    st.stop()
try:
    epochs, z, labels = latents(run.dir)
except (OSError, ValueError) as err:
    epochs = []
    if run.dir.epochs_with("latent.npy"):
        st.error(f"The latent codes of this run cannot be read: {err}")
        st.stop()
if not epochs or not len(labels):
    st.info("No latent codes yet: they are saved when the first epoch ends." if run.active else
            "This run saved no latent codes (no finished epoch, or a latent subset of 0).")  # fmt: skip
    st.stop()


@st.fragment(run_every=3 if run.active else None)
def watch_new_epochs() -> None:
    """While training: redraw the page when a new epoch's codes arrive."""
    fresh = open_run(runs_root(), run.id)
    if fresh.dir.epochs_with("latent.npy")[-1:] != epochs[-1:] or not fresh.active:
        st.rerun()


if run.active:
    watch_new_epochs()
    st.caption(f"Training: showing epochs 1–{epochs[-1]}; the plot updates after each epoch.")
names = run.class_names or [str(i) for i in range(int(labels.max()) + 1)]
fig, note = plots.latent_animation(epochs, z, labels, names)
event = st.plotly_chart(fig, key="latent_chart", on_select="rerun", selection_mode="points",
                        config={"displayModeBar": False, "scrollZoom": False})  # fmt: skip
st.caption(
    f"{len(labels):,} test images · {len(epochs)} epochs · latent size {z.shape[-1]}" + (f" · {note}" if note else "")
)

points = event.selection.points if event and event.selection else []
picked = [p for p in points if p.get("customdata") is not None]
if picked:
    data = picked[0]["customdata"]
    show_reconstruction(run, int(data[0] if isinstance(data, list) else data))
else:
    st.info(":material/touch_app: Click a dot to see that test image and how the model reconstructs it.")
