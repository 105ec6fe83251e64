"""Twin runs: a run beside its twin (one setting changed, the same seed and batches) at one epoch."""

import streamlit as st

from cvae.errors import CVAEError
from cvae.twins import change_words
from ui.runs import open_run, runs_root
from ui.sidebar import current_run, display_name
from ui.twins import common_epochs, partners, side_by_side

st.title(":material/call_split: Twin runs")
run = current_run()
if run is None:
    st.stop()
pairs = partners(run)
if not pairs:
    st.info(f"**{display_name(runs_root(), run.id)}** has no twin yet. On the **Train** page, *Fork as a twin* starts "
            "one: the same settings, seed and batches, with one setting changed.")  # fmt: skip
    st.page_link("app_pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

choice, slider = st.columns([2, 3], vertical_alignment="bottom")
k = choice.selectbox("Twin pair", range(len(pairs)), key="twin_pair", format_func=lambda i: "{} → {}".format(
    *change_words(pairs[i][2])), help="The run in the sidebar, as parent or as twin; each pair differs in one "
    "setting.")  # fmt: skip
parent, twin, record = pairs[k]
epochs = common_epochs(parent, twin)


@st.fragment(run_every=5 if parent.active or twin.active else None)
def watch() -> None:
    """While either trains: redraw the page once both have a new epoch, or one has ended."""
    try:
        fresh = [open_run(runs_root(), r.id) for r in (parent, twin)]
    except CVAEError:  # no longer shared with this user: the page says so on its next run
        st.rerun()
    if common_epochs(*fresh)[-1:] != epochs[-1:] or [r.active for r in fresh] != [parent.active, twin.active]:
        st.rerun()


watch()
if not epochs:
    st.info("No epoch that both runs have finished yet: the pictures appear once each has one."
            if parent.active or twin.active else "These two runs have no finished epoch in common.")  # fmt: skip
    st.stop()
epoch = slider.select_slider("Epoch (both runs)", epochs, value=epochs[-1], key=f"twin_epoch_{twin.id}")
side_by_side(parent, twin, record, epoch)
