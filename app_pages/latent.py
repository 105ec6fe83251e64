"""Latent space: where the encoder puts the test images, epoch by epoch."""

import time

import streamlit as st

from cvae.figures import Export
from ui import plots, slides, versus
from ui.pick import held_epochs, remembered_pick, show_reconstruction
from ui.runs import latents, open_run, runs_root, stamp
from ui.sidebar import current_run, require_config

st.title(":material/scatter_plot: Latent space")
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


REDRAW_S = 10  # while training, the plot is redrawn with the new epochs at most this often
drawn_at = time.time()
# A click reruns the page: it keeps the epochs on screen (a new figure would drop the selection); only the
# timer below takes in new ones.
epochs, z = held_epochs(run, epochs, z, take_new=st.session_state.pop("latent_take_new", False))


@st.fragment(run_every=3 if run.active else None)
def watch_new_epochs() -> None:
    """While training: redraw the page when new epochs' codes have arrived (at most every REDRAW_S seconds)."""
    fresh = open_run(runs_root(), run.id)
    if not fresh.active or (
        fresh.dir.epochs_with("latent.npy")[-1:] != epochs[-1:] and time.time() - drawn_at >= REDRAW_S
    ):
        st.session_state["latent_take_new"] = True
        st.rerun()


@st.cache_resource(max_entries=8, show_spinner=False)
def animation(folder: str, shown: tuple[int, ...], version: tuple[int, int], names: tuple[str, ...], _z, _labels):
    """The animated scatter, built once per new epoch and shared by every tab looking at this run."""
    fig, note = plots.latent_animation(list(shown), _z, _labels, list(names))
    return plots.freeze(fig), note


if run.active:
    watch_new_epochs()
names = run.class_names or [str(i) for i in range(int(labels.max()) + 1)]
fig, note = animation(
    str(run.dir.path), tuple(epochs), stamp(run.dir.artifact(epochs[-1], "latent.npy")), tuple(names), z, labels
)
chart, side = st.columns([5, 2])  # the clicked image beside the plot, on the same screen
with chart:
    event = st.plotly_chart(fig, key="latent_chart", on_select="rerun", selection_mode="points",
                            config={"displayModeBar": False, "scrollZoom": False})  # fmt: skip
frames = (
    f"{len(fig.frames)} of {len(epochs)} epochs animated" if len(fig.frames) < len(epochs) else f"{len(epochs)} epochs"
)
with side:
    st.caption(f"Each dot is one test image at the mean of its code q(z | x, y). **Play** runs through the epochs; "
               f"click a dot to decode it. {len(labels):,} test images · {frames} · latent size {z.shape[-1]}"
               )  # fmt: skip
    if run.active:
        st.caption(f"Training: showing epochs 1–{epochs[-1]}; the plot takes in new epochs as they end.")
    shown = [(f"Epoch {epochs[-1]}", Export("latent", epochs[-1])),
             (f"Epochs {epochs[0]}–{epochs[-1]}, animated", Export("animation", epochs[-1]))]  # fmt: skip
    slides.download(run, shown, "latent_slides")
    points = event.selection.points if event and event.selection else []
    picked = remembered_pick(run, fig, [p for p in points if p.get("customdata") is not None])
    if picked:
        show_reconstruction(run, *picked)  # by the model of the epoch on screen when the dot was clicked
    else:
        st.info(":material/touch_app: Click a dot to see that test image and how the model reconstructs it.")
    vae = run.config.model.condition == "none"
    why = "Why do the classes form clusters?" if vae else "Why do the classes mix?"
    with st.expander(why, expanded=not picked, icon=":material/school:"):
        st.markdown(
            "A **conditional** VAE gives the label y to the decoder as well. So z does not have to say which "
            "class an image is: the decoder already knows. The encoder is free to use z for what the label does "
            "not say, the **style** (slant, stroke width, size), which is shared by all classes, so the classes "
            "overlap. A plain VAE gets no label: it must put the class into z, and its latent space falls into "
            "clusters, one per class. The **Generate** page shows the other side: one z, decoded under every class, "
            "keeps its style."
        )
vaes = [] if vae else versus.vae_runs(runs_root())
if vaes and st.toggle("Show a plain VAE's latent space beside this one", key="latent_vae"):
    versus.show_beside(run, z[-1], labels, names, vaes)
