"""Train: start a run (or the quick demo), watch it learn live, stop or resume it, name it."""

import streamlit as st

from cvae.errors import CVAEError
from cvae.names import write_meta
from ui.auth import can_manage, current_user
from ui.bounds import bounds_section
from ui.controls import run_controls
from ui.live import live_panel
from ui.runs import run_ids, runs_root, state_badge
from ui.sidebar import FORM_OPEN, current_run, display_name, meta
from ui.train_form import (
    ask_for_quick_demo,
    empty_state,
    new_run_form,
    runs_table,
    start_problem,
    warm_up_trainers,
)
from ui.twins import fork_control

warm_up_trainers()  # once a session: the fork server is ready before anyone clicks
start_problem()  # a Quick demo click that could not start a run says why
have_runs = bool(run_ids(runs_root()))
title, buttons = st.columns([3, 2], vertical_alignment="center")
title.title(":material/model_training: Train")
if have_runs:
    with buttons.container(horizontal=True, horizontal_alignment="right"):
        if st.button("New run", icon=":material/add_circle:", key="new_run", type="tertiary"
                     if st.session_state.get(FORM_OPEN) else "secondary", help="Show or hide the new-run form"):  # fmt: skip
            st.session_state[FORM_OPEN] = not st.session_state.get(FORM_OPEN)
        st.button("Quick demo", icon=":material/rocket_launch:", key="quick_demo_again", on_click=ask_for_quick_demo,
                  help="A small network on MNIST with a 2-D latent space; its first pictures a second after training "
                       "starts")  # fmt: skip
else:
    empty_state()
# The form is shown on request (or while there are no runs); starting a run folds it away (ui.sidebar.select),
# so the new run's progress and curves take the first screen.
if not have_runs or st.session_state.get(FORM_OPEN):
    with st.container(border=True):
        st.markdown("#### :material/add_circle: New run")
        new_run_form()

run = current_run() if have_runs else None
if run is not None:
    names = meta(run.dir.path)
    head, controls = st.columns([2, 3], vertical_alignment="bottom")
    head.markdown(f"**{display_name(runs_root(), run.id)}** {state_badge(run.state, run.state_text)}")
    head.caption((f"{run.id} · " if names["name"] else "") + (run.description if run.active else run.label))
    with controls:
        run_controls(run)
    live_panel(run)
    bounds_section(run)  # a run that has ended: its bounds on -log p(x | y) and their gaps
    editable = can_manage(run)  # a classmate's or the lecturer's run: its note to read, no form to be refused
    if editable or names["note"]:
        with st.expander("Name and note" if editable else "Note", icon=":material/edit:"):
            if editable:
                with st.form("run_meta", border=False):
                    name = st.text_input("Name (shown in the run picker and in comparisons)", names["name"],
                                         max_chars=80)  # fmt: skip
                    note = st.text_area("Note", names["note"], max_chars=2000, height=80)
                    if st.form_submit_button("Save"):
                        try:
                            write_meta(run.dir.path, name=name, note=note, user=current_user())
                        except (CVAEError, OSError) as err:
                            st.error(f"Could not save the name: {err}")
                        else:
                            st.rerun()
            if names["note"]:
                st.markdown(names["note"])
    with st.expander("Fork as a twin", icon=":material/call_split:"):
        fork_control(run)
    with st.expander("All runs"):
        runs_table()
