"""Generate: new images of a chosen class, from a grid of codes, random codes or your own sliders."""

import streamlit as st

from ui import gen
from ui.models import test_images
from ui.pick import model_or_message
from ui.runs import stamp
from ui.sidebar import current_run, require_config

st.title(":material/palette: Generate")
run = current_run()
if run is None or not require_config(run):
    st.stop()
loaded = model_or_message(run)
if loaded is None:
    st.stop()
net, epoch = loaded
names = run.class_names or [str(i) for i in range(net.config.num_classes)]
ckpt = run.dir.latest_checkpoint
st.caption(f"The model of epoch {epoch} decodes codes z under the class you pick: the class is given, z is the style.")
label = (
    st.segmented_control("Class", range(len(names)), format_func=lambda k: names[k], default=0, key="gen_class") or 0
)

grids, sliders, style, morph = st.tabs(["Grids", "Latent sliders", "Same style, every class", "Interpolation"])
with grids:
    c1, c2 = st.columns(2)
    span = c1.slider("Uniform grid covers z₁, z₂ in [−span, span]", 0.5, 4.0, 2.0, 0.5, key="gen_span")
    seed = c2.number_input("Random seed", 0, 10**6, 0, key="gen_seed")
    uniform = gen.grid_png(str(ckpt), stamp(ckpt), "uniform", label, 20, span, 0)
    rand = gen.grid_png(str(ckpt), stamp(ckpt), "random", label, 20, 2.0, int(seed))
    c1.image(uniform, caption=f"20×20 grid over z₁ (→) and z₂ (↑), class {names[label]}", width="stretch")
    c2.image(rand, caption=f"400 random codes z ~ N(0, I), class {names[label]}", width="stretch")
    c1.download_button(
        "Grid PNG", uniform, f"{run.id}_uniform_{label}.png", "image/png", key="dl_uniform", icon=":material/download:"
    )
    c2.download_button(
        "Random PNG", rand, f"{run.id}_random_{label}.png", "image/png", key="dl_random", icon=":material/download:"
    )

with sliders:
    zdim = net.config.latent_dim
    shown = min(zdim, 8)
    if zdim > shown:
        st.caption(f"Sliders for the first {shown} of {zdim} latent dimensions; the others stay at 0.")
    left, right = st.columns([2, 1])
    z = [left.slider(f"z{i + 1}", -3.0, 3.0, 0.0, 0.1, key=f"z_{i}") for i in range(shown)] + [0.0] * (zdim - shown)
    right.image(gen.decode_png(net, z, label), caption=f"class {names[label]}")

with style:
    st.caption("Encode one test image under its own class, then decode the same code under every class.")
    x, y = test_images(run, 1000)
    i = st.number_input("Test image #", 0, len(x) - 1, 0, key="style_index")
    a, b = st.columns([1, 6])
    a.image(gen.upscale(x[i : i + 1], 1, 2 * gen.scale_for(x.shape[-2])), caption=f"class {names[int(y[i])]}")
    b.image(gen.restyle_png(net, x[i], int(y[i])), caption=" · ".join(names))

with morph:
    c1, c2, c3 = st.columns(3)
    ia = c1.number_input("From test image #", 0, len(x) - 1, 0, key="morph_a")
    ib = c2.number_input("To test image #", 0, len(x) - 1, 1, key="morph_b")
    steps = c3.slider("Steps", 3, 16, 10, key="morph_steps")
    st.image(
        gen.interpolate_png(net, x[ia], int(y[ia]), x[ib], int(y[ib]), steps),
        caption=f"class {names[int(y[ia])]} → class {names[int(y[ib])]}: code and label blended",
        width="stretch",
    )

st.divider()
st.download_button(
    "Download the checkpoint (latest.pt)",
    lambda: ckpt.read_bytes(),
    f"{run.id}.pt",
    "application/octet-stream",
    key="dl_ckpt",
    icon=":material/download:",
    help="Weights and config; load with cvae.generate.load_model",
)
