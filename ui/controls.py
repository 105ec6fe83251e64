"""Run controls on the Train page: stop or cancel, resume, start again, delete (with a confirmation).

With sign-in on, only a run's owner and the lecturers get the buttons; everyone else sees who owns it.
The library checks the user again in each operation (cvae.classroom).
"""

from __future__ import annotations

import streamlit as st

from cvae import jobs
from cvae.errors import CVAEError
from ui.auth import can_manage, current_user, owner_note, pin_control
from ui.runs import Run

CONFIRM = "_confirm_delete"  # session key: the run id whose deletion awaits a second click


def run_controls(run: Run) -> None:
    if not can_manage(run):
        st.caption(f":material/lock: {owner_note(run)}")
        return
    if run.active:
        with st.container(horizontal=True, vertical_alignment="bottom", horizontal_alignment="right"):
            pin_control(run)
            _stop(run)
        return
    # Buttons sized to their labels, side by side, wrapping on a narrow screen: never "Resume from epo…".
    with st.container(horizontal=True, vertical_alignment="bottom", horizontal_alignment="right"):
        pin_control(run)
        if run.dir.latest_checkpoint.is_file():
            kind = "primary" if run.state in ("interrupted", "stopped") else "secondary"
            epoch = int(run.status.get("epoch") or 0)
            if st.button(f"Resume from epoch {epoch}" if epoch else "Resume", icon=":material/resume:", key="resume",
                         type=kind, help="Train more epochs from the last checkpoint."):  # fmt: skip
                _do("resume", jobs.resume, run.dir, int(st.session_state.get("more_epochs") or 5), current_user())
            st.number_input("Epochs to add", 1, 100_000, 5, key="more_epochs", width=140,
                            help=f"Resume trains this many more epochs after the {epoch} done: with 5, the run "
                                 f"ends at epoch {epoch + 5}.")  # fmt: skip
        elif jobs.can_start_again(run.dir):
            st.caption("No checkpoint yet (it ended before its first epoch).")
            if st.button("Start again", icon=":material/restart_alt:", key="start_again", type="primary"):
                _do("start it again", jobs.start_again, run.dir, current_user())
        else:
            st.caption("No checkpoint yet: start a new run.")
        if st.button("", icon=":material/delete:", key="delete", help="Delete this run: remove its folder for good."):
            st.session_state[CONFIRM] = run.id
    if st.session_state.get(CONFIRM) == run.id:
        _confirm_delete(run)


def _stop(run: Run) -> None:
    queued = run.state == "queued"
    label, icon = ("Cancel (leave the queue)", ":material/cancel:") if queued else ("Stop", ":material/stop:")
    tip = "Takes the run out of the queue." if queued else "Stops after the current batch; keeps the last checkpoint."
    if st.button(label, icon=icon, key="stop", help=tip):
        try:
            stopped = jobs.stop(run.dir, current_user())
        except CVAEError as err:
            st.error(f"Could not stop it: {err}")
            return
        st.toast("Stopping…" if stopped else "The run was not running any more.")


def _confirm_delete(run: Run) -> None:
    with st.container(border=True):
        st.warning(f"Delete run **{run.id}** with its checkpoints and pictures? This cannot be undone.")
        yes, no, _ = st.columns([1, 1, 4])
        if yes.button("Yes, delete it", type="primary", key="delete_yes", icon=":material/delete_forever:"):
            st.session_state.pop(CONFIRM, None)
            if _do("delete it", jobs.delete, run.dir, current_user(), rerun=False):
                st.session_state.pop("current_run", None)
                st.query_params.pop("run", None)
                st.rerun()
        if no.button("Cancel", key="delete_no"):
            st.session_state.pop(CONFIRM, None)
            st.rerun()


def _do(what: str, action, *args, rerun: bool = True) -> bool:
    """Run a cvae.jobs action; a problem is one line on the page, never a traceback."""
    try:
        action(*args)
    except CVAEError as err:
        st.error(f"Could not {what}: {err}")
        return False
    except OSError as err:
        st.error(f"Could not {what}: {jobs.explain(err)}")
        return False
    if rerun:
        st.rerun()
    return True
