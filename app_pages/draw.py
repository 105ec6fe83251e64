"""Draw a digit: the model reconstructs it under every class and shows where it lands in the latent space."""

import streamlit as st

from cvae.drawing import centre_digit, model_input
from cvae.errors import CVAEError
from ui import draw
from ui.models import upscale
from ui.pick import model_or_message
from ui.runs import stamp
from ui.sidebar import current_run, require_config
from ui.sketch import sketch

st.title(":material/draw: Draw a digit")
run = current_run()
if run is None or not require_config(run):
    st.stop()
if run.config.model.channels != 1:
    st.info(f"Run **{run.id}** makes colour images: drawing is for grey digits (an MNIST run).")
    st.stop()
loaded = model_or_message(run)
if loaded is None:
    st.stop()
net, epoch = loaded
c = net.config
labelled = c.condition == "label"
names = run.class_names or [str(k) for k in range(c.num_classes)]

pad, mid, right = st.columns([1, 1.2, 1.55], gap="medium")
with pad:
    ink = sketch("draw_canvas")
if ink is None or not ink.any():
    mid.info(":material/draw: Draw a digit in the black square with the mouse (or a finger): white strokes, as "
             "MNIST's digits are. The model reconstructs it under every class and shows where it lands in z.")  # fmt: skip
    st.stop()
x = model_input(net, centre_digit(ink, (c.height, c.width))).numpy()
thumb, words = pad.columns([1, 2.2], vertical_alignment="center")
thumb.image(upscale(x[None], 1, 3, padding=0), width="stretch", output_format="PNG")
words.caption(f"What the model saw: your digit made {c.height}×{c.width} and centred as MNIST's are"
              + (", pixel ≥ 0.5 → 1 as in training" if c.likelihood == "bernoulli" else ""))  # fmt: skip
with mid:
    label = None
    if labelled:
        label = st.selectbox("Encode it as class", [None, *range(c.num_classes)], key="draw_label",
                             format_func=lambda k: "the model's guess" if k is None else names[k],
                             help="q(z | x, y) needs a class y: the model's guess, or one you choose.")  # fmt: skip
    ckpt = run.dir.latest_checkpoint
    try:
        r = draw.reading(str(ckpt), stamp(ckpt), net, x, label)
    except CVAEError as err:
        st.error(f"Cannot read this drawing: {err}")
        st.stop()
    if labelled:
        order = r.nelbo.argsort().tolist()  # the classes from the likeliest
        nxt = f"; next {names[order[1]]}, {r.nelbo[order[1]]:.0f}" if len(order) > 1 else ""
        st.markdown(f"The model reads a **{names[r.guess]}**: under that class your digit is most likely "
                    f"(−ELBO {r.nelbo[order[0]]:.0f} nats{nxt}).")  # fmt: skip
        caption = (f"Its code z, the mean of q(z | x, y = {names[r.label]}), decoded under every class, "
                   f"{names[0]} to {names[-1]} in rows of {draw.ROW}")  # fmt: skip
    else:
        caption = "A plain VAE is given no class: its one reconstruction, from the mean of q(z | x)"
    st.image(draw.classes_png(r.images, r.label), caption=caption, width="stretch" if labelled else 168,
             output_format="PNG")  # fmt: skip
fig = draw.latent_figure(run, r.mu.numpy(), r.label, names)
if fig is None:
    right.info("This run kept no latent codes of its test images to place your digit among.")
else:
    right.plotly_chart(fig, key="draw_latent", config={"displayModeBar": False})
    right.caption(
        f"The red ring: your digit among the test images, each at the mean of its own code (model of epoch {epoch})."
    )
