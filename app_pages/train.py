"""Train: start a run (or the quick demo), watch it learn live, stop or resume it."""

import streamlit as st

from ui.controls import run_controls
from ui.live import live_panel
from ui.runs import run_ids, runs_root, state_badge
from ui.sidebar import current_run
from ui.train_form import empty_state, new_run_form, runs_table

st.title(":material/model_training: Train a conditional VAE")
have_runs = bool(run_ids(runs_root()))
if not have_runs:
    empty_state()
with st.expander("New run", expanded=False, icon=":material/add_circle:"):
    new_run_form()

run = current_run() if have_runs else None
if run is not None:
    st.subheader(f"{run.id} {state_badge(run.state, run.state_text)}")
    st.caption(run.description if run.active else run.label)  # a live run's progress is drawn below, live
    run_controls(run)
    live_panel(run)
    with st.expander("All runs"):
        runs_table()
