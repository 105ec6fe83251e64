"""The shared sidebar: the run picker, kept in the URL (?run=<id>) so a reload finds the run again."""

from __future__ import annotations

import streamlit as st

from cvae.errors import CVAEError
from ui.runs import Run, open_run, run_ids, runs_root

PENDING = "_select_run"  # a page asks to show another run (e.g. one it just started)
CURRENT = "current_run"  # the run the pages show (a plain key: it outlives the picker widget)


def select(run_id: str) -> None:
    """Show `run_id` on the next rerun (the picker cannot change once drawn)."""
    st.session_state[PENDING] = run_id


def _to_url() -> None:
    """The picker changed: put the new run in the address bar before the page reads it."""
    st.session_state[CURRENT] = st.session_state.get("run")
    if st.session_state.get("run"):
        st.query_params["run"] = st.session_state["run"]
    else:
        st.query_params.pop("run", None)


def run_picker() -> None:
    root = runs_root()
    ids = run_ids(root)
    wanted = st.query_params.get("run")
    if PENDING in st.session_state:
        chosen = st.session_state.pop(PENDING)
    elif wanted in ids:
        chosen = wanted  # a reload or a shared link
    elif st.session_state.get("run") in ids:
        chosen = st.session_state["run"]  # page switches clear the address's query
    else:
        chosen = ids[0] if ids else None  # newest run by default
    if wanted and wanted not in ids:
        st.sidebar.warning(f"No run called {wanted[:60]!r} here (deleted, or a mistyped address); showing another.")
    st.session_state["run"] = st.session_state[CURRENT] = chosen if chosen in ids else None
    _to_url()
    states = {i: _state(root, i) for i in ids}
    st.sidebar.selectbox(
        "Run", ids, key="run", on_change=_to_url, placeholder="no runs yet",
        format_func=lambda i: f"{i}  ·  {states.get(i, 'unknown')}",
        help="Every training run has a folder; its id is also in the page address, so a reload finds it again.",
    )  # fmt: skip
    st.sidebar.caption(f"Runs folder: `{root}`")


def _state(root, run_id: str) -> str:
    try:
        return open_run(root, run_id).state_text
    except CVAEError:
        return "unknown"


def current_run() -> Run | None:
    """The picked run, or None (with a message on the page saying what to do)."""
    run_id = st.session_state.get(CURRENT)
    if not run_id:
        st.info("No run yet. Start one on the **Train** page: the quick demo shows pictures within about a minute.")
        st.page_link("app_pages/train.py", label="Go to Train", icon=":material/model_training:")
        return None
    try:
        return open_run(runs_root(), run_id)
    except CVAEError as err:
        st.error(f"Cannot open this run: {err}")
        return None


def require_config(run: Run) -> bool:
    """True if the run's config is readable; otherwise say why on the page."""
    if run.config is not None:
        return True
    if run.active:
        st.info(f"Run **{run.id}** is starting (loading data); this page fills in once its first epoch is done.")
    else:
        st.error(
            f"Run **{run.id}** cannot be shown: {run.problem}. It may have failed while starting; see its log on the Train page."
        )
    return False
