"""Generate: new images of a chosen class, from a grid of codes, random codes or your own sliders."""

import streamlit as st

from ui import gen
from ui.models import test_images
from ui.pick import model_or_message
from ui.runs import stamp
from ui.sidebar import current_run, require_config
from ui.upload import uploaded_model

st.title(":material/palette: Generate")
top, pick = st.columns([2, 3])  # the model and the class on one row, so the grids start on the first screen
source = top.segmented_control("Model", ["run", "upload"], default="run", key="gen_source",
                              format_func={"run": "The picked run", "upload": "Upload a checkpoint"}.get) or "run"  # fmt: skip
run = x = y = None
if source == "upload":
    uploaded = uploaded_model()
    if uploaded is None:
        st.stop()
    ckpt, net, epoch, names, stem = uploaded
else:
    run = current_run()
    if run is None or not require_config(run):
        st.stop()
    loaded = model_or_message(run)
    if loaded is None:
        st.stop()
    net, epoch = loaded
    names = run.class_names or [str(i) for i in range(net.config.num_classes)]
    ckpt, stem = run.dir.latest_checkpoint, run.id
    x, y = test_images(run, 1000)
label = (
    pick.segmented_control("Class (every tab)", range(len(names)), format_func=lambda k: names[k], default=0,
                           key="gen_class",
                           help=f"The model of epoch {epoch} decodes codes z under this class: the class is given, "
                                "z is the style.") or 0
)  # fmt: skip

grids, sliders, style, morph = st.tabs(["Grids", "Latent sliders", "Same style, every class", "Interpolation"])
with grids:
    gen.grids(str(ckpt), stamp(ckpt), label, names[label], stem, slides_of=(run, epoch) if run is not None else None)
with sliders:
    gen.sliders(str(ckpt), stamp(ckpt), net, label, names[label])
with style:
    gen.same_style(str(ckpt), stamp(ckpt), net, names, x, y, label)
with morph:
    if x is None:
        st.info("The interpolation walks between two test images of a run: pick **The picked run** above.")
    else:
        gen.interpolation(str(ckpt), stamp(ckpt), net, x, y, label, names)

if run is not None:
    st.divider()
    st.download_button(
        "Download the checkpoint (latest.pt)", lambda: ckpt.read_bytes(), f"{run.id}.pt", "application/octet-stream",
        key="dl_ckpt", icon=":material/download:", help="Weights and config; load with cvae.generate.load_model",
    )  # fmt: skip
