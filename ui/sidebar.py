"""The shared sidebar: the run picker, kept in the URL (?run=<id>) so a reload finds the run again."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from cvae.errors import CVAEError
from cvae.names import META_FILE, read_meta
from ui.runs import Run, open_run, run_ids, runs_root, stamp

PENDING = "_select_run"  # a page asks to show another run (e.g. one it just started)
CURRENT = "current_run"  # the run the pages show (a plain key: it outlives the picker widget)
FORM_OPEN = "new_run_form_open"  # the Train page shows the new-run form (folded away once a run starts)


def select(run_id: str) -> None:
    """Show `run_id` on the next rerun (the picker cannot change once drawn)."""
    st.session_state[PENDING] = run_id
    st.session_state[FORM_OPEN] = False  # the new run replaces the form on the Train page


def _to_url() -> None:
    """The picker changed: put the new run in the address bar before the page reads it. The browser names its
    choice by the label it was shown, which goes stale when the run's state changes: a value that is no run of
    this folder is left alone (the address keeps the run the page shows)."""
    chosen = st.session_state.get("run")
    if chosen and chosen not in run_ids(runs_root()):
        return
    st.session_state[CURRENT] = chosen
    if chosen:
        st.query_params["run"] = chosen
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
    elif st.session_state.get(CURRENT) in ids:
        # the picker's own value can be a label the browser was shown before the run's state changed: the
        # run this session showed last, never a classmate's newer one
        chosen = st.session_state[CURRENT]
    else:
        chosen = ids[0] if ids else None  # newest run by default
    if wanted and wanted not in ids:
        st.sidebar.warning(f"No run called {wanted[:60]!r} here (deleted, or a mistyped address); showing another.")
    st.session_state["run"] = st.session_state[CURRENT] = chosen if chosen in ids else None
    _to_url()
    labels = unique_labels({i: picker_label(root, i) for i in ids})
    st.sidebar.selectbox(
        "Run", ids, key="run", on_change=_to_url, placeholder="no runs yet",
        format_func=lambda i: labels.get(i, i),
        help="Every training run has a folder; its id is also in the page address, so a reload finds it again. "
             "Give a run a name on the Train page.",
    )  # fmt: skip
    st.sidebar.caption(f"Runs folder: `{_short(root)}`", help=str(root))


def unique_labels(labels: dict[str, str]) -> dict[str, str]:
    """The picker's labels, each run's its own: the browser answers with the label, so two runs shown alike
    (a class's quick demos started in the same second) would be taken for one another; those get their id."""
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {i: f"{label} · {i}" if seen[label] > 1 else label for i, label in labels.items()}


def _short(root: Path) -> str:
    """The runs folder relative to where the server was started, when it is inside it (a short, stable text)."""
    try:
        return str(root.relative_to(Path.cwd().resolve())) + "/"
    except ValueError:
        return root.name + "/"


def picker_label(root: Path, run_id: str) -> str:
    """'state · name' (the run's given name, else its id), and whose run it is where sign-in is on
    ('state · alice · name'): the state first, so a long name never hides it."""
    try:
        run = open_run(root, run_id)
        state, owner = run.state_text, run.owner
    except CVAEError:
        state, owner = "unknown", None
    return f"{state} · {owner + ' · ' if owner else ''}{display_name(root, run_id)}"


def display_name(root: Path, run_id: str) -> str:
    """The name a person gave the run, or its id made readable: 'MNIST-bernoulli-z2 (11-27 02:00:41)'."""
    return meta(root / run_id)["name"] or readable_id(run_id)


def readable_id(run_id: str) -> str:
    """A generated id '<yyyymmdd>-<hhmmss>-<what>' as '<what> (mm-dd hh:mm:ss)', the part that tells runs apart
    first; any other id as it is."""
    match = re.fullmatch(r"\d{4}(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})-(.+)", run_id)
    if not match:
        return run_id
    month, day, hour, minute, second, what = match.groups()
    return f"{what} ({month}-{day} {hour}:{minute}:{second})"  # to the second: a class starts many in a minute


def meta(run_dir: Path) -> dict[str, str]:
    """The run's name and note (cvae.names), re-read only when meta.json changes."""
    path = run_dir / META_FILE
    return _meta(str(run_dir), stamp(path))


@st.cache_data(max_entries=512, show_spinner=False)
def _meta(run_dir: str, version: tuple[int, int]) -> dict[str, str]:
    return read_meta(Path(run_dir))


def current_run() -> Run | None:
    """The picked run, or None (with a message on the page saying what to do)."""
    run_id = st.session_state.get(CURRENT)
    if not run_id:
        st.info(
            "No run yet. Start one on the **Train** page: the quick demo shows its first pictures a second after it starts training."
        )
        st.page_link("app_pages/train.py", label="Go to Train", icon=":material/model_training:")
        return None
    try:
        return open_run(runs_root(), run_id)
    except CVAEError as err:
        st.error(f"Cannot open this run: {err}")
        return None


def require_config(run: Run) -> bool:
    """True if the run's config is readable; otherwise say why on the page."""
    if run.config is not None and not run.completion:
        return True
    if run.completion:
        st.info(f"Run **{run.id}** completes digits from some of their quadrants: it is shown on the "
                "**Complete a digit** page.")  # fmt: skip
        st.page_link("app_pages/complete.py", label="Go to Complete a digit", icon=":material/extension:")
    elif run.active:
        st.info(f"Run **{run.id}** is starting (loading data); this page fills in once its first epoch is done.")
    else:
        st.error(
            f"Run **{run.id}** cannot be shown: {run.problem}. It may have failed while starting; see its log on the Train page."
        )
    return False
