"""Complete a digit: the CVAE paper's own experiment. One input (some quadrants), many plausible outputs."""

import streamlit as st
import torch

from cvae.errors import CVAEError
from ui import completion as comp
from ui.runs import runs_root
from ui.sketch import sketch

st.title(":material/extension: Complete a digit")
st.markdown(
    "The model sees **part of a test digit** (grey: hidden) and draws the rest. One input fits several digits, "
    "so the CVAE draws **different, sharp completions** each time, while the deterministic baseline must give "
    "one answer and **averages them into a blur**."
)
root = runs_root()
runs = comp.completion_runs(root)
ready = [r for r in runs if r.dir.latest_checkpoint.is_file()]
if not ready:
    st.info("No run completes digits yet." + (" One is training: it appears here when its first epoch ends."
            if runs else " Train one (the paper's model, bottom-left quadrant given) from here, or with "
            "`python -m cvae.train --condition quadrants --quadrants 1 --epochs 1`."))  # fmt: skip
    if not runs and st.button("Train the 1-quadrant model (about a minute)", icon=":material/rocket_launch:",
                              type="primary", key="complete_preset"):  # fmt: skip
        comp.start_preset()
    if runs:
        comp.wait_for_first_epoch(runs[0])
    st.stop()

wanted = st.session_state.get("current_run")
ids = [r.id for r in ready]
top = st.columns([2.6, 1.6, 1.3, 1.1, 1.6], vertical_alignment="bottom")
run = ready[top[0].selectbox("Completion model", range(len(ready)), format_func=lambda i: comp.picker_label(ready[i]),
                             index=ids.index(wanted) if wanted in ids else 0, key="complete_run")]  # fmt: skip
try:
    net = comp.models(run)
    images, labels = comp.digits(grey=run.config is not None and run.config.data.binarize == "none")
except CVAEError as err:
    st.error(f"Cannot load this model or the test digits: {err}")
    st.stop()
counts = [1, 2, 3] if run.quadrants == 0 else [run.quadrants]
k = top[1].segmented_control("Quadrants", counts, default=counts[0], key="complete_k",
                             help="Only what the model was trained for: bottom-left, then top-left, then "
                                  "top-right.") or counts[0]  # fmt: skip
digit = top[3].selectbox("Class", range(10), key="complete_class", help="of the random digit (the button)")
if top[4].button(
    "Random digit", icon=":material/casino:", key="complete_random", help="A random test digit of the class on the left"
):
    pool = (labels == digit).nonzero().flatten()
    st.session_state["complete_index"] = int(pool[torch.randint(len(pool), ())])
st.session_state.setdefault("complete_index", 1)  # test digit 1, a 2: its bottom-left fits a 2, a 3 or a 6
index = top[2].number_input("Test digit", 0, len(images) - 1, key="complete_index")
seed = st.session_state.setdefault("complete_seed", 0)

start = comp.given_part(net, images[index], k)
cols = st.columns([1.15, 0.9, 2, 1.1])
with cols[0]:
    ink = sketch("complete_canvas", start=start, hidden=comp.hidden_rects(net, k))
    x = comp.drawn_input(net, ink, start)
    st.caption(f"Given: the {comp.given_text(k)} of test digit #{index}: draw or erase in it (Clear: a blank)"
               if ink is None else f"Given: your drawing in the {comp.given_text(k)} (Reset: test digit #{index}'s)")  # fmt: skip
baseline, grid, spread = comp.pictures(net, x, k, samples=12, seed=seed)
cols[1].image(baseline, caption="Baseline: its single prediction, the average of what fits", width="stretch")
cols[1].image(spread, caption=f"Spread: where {comp.SPREAD_DRAWS} CVAE completions disagree (std per pixel)",
              width="stretch")  # fmt: skip
cols[2].image(grid, caption="CVAE: 12 completions, each from its own z ~ p(z | x)", width="stretch")
if cols[2].button("Draw again", icon=":material/refresh:", key="complete_again"):
    st.session_state["complete_seed"] = seed + 1
    st.rerun()
with cols[3]:
    t = st.session_state.setdefault("complete_t", 1.0)
    st.image(comp.walk(net, x, k, t, seed), caption="CVAE: one z, walked by the slider", width="stretch")
    st.slider("Walk through z", -2.0, 2.0, step=0.1, key="complete_t",
              help="z = mean + t × std × d along one fixed random direction d of the prior p(z | x): 0 is the "
                   "prior's mean, ±1 two ordinary samples. The given part stays; the hidden part moves from one "
                   "plausible digit to another. The baseline has no z: it cannot do this.")  # fmt: skip
