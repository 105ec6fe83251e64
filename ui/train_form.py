"""The Train page's widgets: the new-run form, the empty state and the runs table.

The form is built from cvae.config's options (label, help, default, limits
and choices come from there), so it offers exactly the command line's options
with the command line's defaults; the quick demo is a named preset. Problems
are the config's own one-line messages.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from cvae import jobs
from cvae.config import BY_NAME, OPTIONS, Option
from cvae.errors import CVAEError
from ui.auth import current_user, mode
from ui.runs import metrics, open_runs, runs_root
from ui.sidebar import select

BUILTIN = {"MNIST": "MNIST (digits, 28×28, grey)", "CIFAR10": "CIFAR-10 (photos, 32×32, colour)"}

# When a widget matters, from the values chosen so far (the config refuses the rest anyway).
RELEVANT = {
    "model_sigma": lambda v: v["decoder_type"] == "gaussian",
    "fixed_sigma": lambda v: v["decoder_type"] == "gaussian" and not v["model_sigma"],
    "binarize": lambda v: v["decoder_type"] == "bernoulli",
    "image_size": lambda v: v["dataset"] not in BUILTIN,
    "warmup_epochs": lambda v: v["lr_schedule"] == "cosine",
    "lr_decay": lambda v: v["lr_schedule"] == "exponential",
    "quadrants": lambda v: v["condition"] == "quadrants",
    "mask_channel": lambda v: v["condition"] == "quadrants",
    "prior": lambda v: v["condition"] != "none",
    "baseline": lambda v: v["condition"] != "none" and v["arch"] == "mlp",
}


def _launch(options: dict[str, Any]) -> str | None:
    """Start a run and show it next (the form folds away: the new run is what matters now); the one-line
    problem when it could not start, else None."""
    try:
        run = jobs.start(runs_root(), options, user=current_user(), data_roots=jobs.data_roots())
    except CVAEError as err:
        return f"Could not start the run: {err}"
    except OSError as err:  # disk full, read-only runs folder: one sentence, no traceback
        return f"Could not start the run: {jobs.explain(err)}"
    select(run.id)
    return None


def _start(options: dict[str, Any]) -> None:
    problem = _launch(options)
    if problem:
        st.error(problem)
    else:
        st.rerun()


WARMED = "trainers_warmed"
START_PROBLEM = "quick_demo_problem"  # why the last Quick demo click could not start one, shown by the page


def warm_up_trainers() -> None:
    """Start the runs folder's fork server (cvae.forkserver) once per browser session, so the runs this session
    starts (and its classmates') start warm, in milliseconds, instead of each importing torch."""
    if st.session_state.get(WARMED) or not jobs.fork_server_on():
        return
    st.session_state[WARMED] = True
    from cvae import forkserver

    forkserver.ensure(runs_root())


def ask_for_quick_demo() -> None:
    """A Quick demo button's callback: it starts the library's preset (cvae.config.QUICK_DEMO, by name) before the
    page runs, so the click counts even when the page it was on has changed meanwhile (a classmate's run made
    the empty state the runs view), and the page draws the new run at once (the run picker is not drawn yet)."""
    problem = _launch(dict(jobs.QUICK_DEMO_OPTIONS))
    if problem:
        st.session_state[START_PROBLEM] = problem  # shown by the page (a callback draws nothing)


def start_problem() -> None:
    """The page's one line for a Quick demo click that could not start (see `ask_for_quick_demo`)."""
    problem = st.session_state.pop(START_PROBLEM, None)
    if problem:
        st.error(problem)


def quick_demo_button(primary: bool = True, key: str = "quick_demo") -> None:
    st.button("Start the quick demo", icon=":material/rocket_launch:", type="primary" if primary else "secondary",
              key=key, on_click=ask_for_quick_demo,
              help="A small network on MNIST digits with a 2-D latent space; its first pictures a second after it "
                   "starts training.")  # fmt: skip


def empty_state() -> None:
    with st.container(border=True):
        st.markdown("## :material/waving_hand: No runs yet\nA **run** trains one conditional VAE and keeps everything it learns in a "
                    "folder: curves, reconstructions, the latent space and the model. Start with the quick demo: "
                    "a small network on MNIST digits with a 2-D latent space. Its first pictures appear a second after it starts training, and improve live.")  # fmt: skip
        quick_demo_button()


def _widget(opt: Option, where: Any, values: dict[str, Any]) -> Any:
    """One option's widget, from its declaration: a choice, a switch, a number or text."""
    disabled = not RELEVANT.get(opt.name, lambda v: True)(values)
    common = dict(label=opt.label, help=opt.help, key=f"f_{opt.name}", disabled=disabled)
    if opt.choices:
        shown = dict(zip(opt.choices, opt.user_choices(), strict=True))
        if len(opt.choices) <= 2:  # a radio reads at a glance; more choices wrap: a select box
            return where.radio(options=list(opt.choices), format_func=shown.get, horizontal=True,
                               index=opt.choices.index(opt.default), **common)  # fmt: skip
        return where.selectbox(options=list(opt.choices), format_func=shown.get, index=opt.choices.index(opt.default),
                               **common)  # fmt: skip
    if opt.kind is bool:
        return where.checkbox(value=opt.default, **common)
    if opt.kind in (int, float):
        low = None if opt.low is None or opt.low_open else opt.kind(opt.low)
        high = None if opt.high is None else opt.kind(opt.high)
        fmt = "%d" if opt.kind is int else "%g"
        value = where.number_input(min_value=low, max_value=high, value=opt.default, format=fmt,
                                   placeholder="all" if opt.optional else None, **common)  # fmt: skip
        return None if value is None else opt.kind(value)
    return where.text_input(value=opt.default, **common)


def _dataset(where: Any) -> str:
    folders = jobs.image_folders(jobs.data_roots())
    choices = [*BUILTIN, *folders]
    label = {**BUILTIN, **{f: f"Image folder: {f}" for f in folders}}
    return where.selectbox("Dataset", choices, format_func=label.get, key="f_dataset",
                           help="MNIST, CIFAR-10, or an image folder (one sub-folder per class) under the server's "
                                f"data folders: {', '.join(str(r) for r in jobs.data_roots())}")  # fmt: skip


def new_run_form() -> None:
    """Every option of the command line, with its defaults; checked before anything starts."""
    main = [o for o in OPTIONS if o.form == "main" and o.name != "dataset"]
    more = [o for o in OPTIONS if o.form == "more"]
    values: dict[str, Any] = {"dataset": _dataset(st)}
    before = _current()
    columns = st.columns(3)
    for k, opt in enumerate(main):
        values[opt.name] = _widget(opt, columns[k % 3], {**before, **values})
    with st.expander("More options"):
        columns = st.columns(4)
        for k, opt in enumerate(more):
            values[opt.name] = _widget(opt, columns[k % 4], {**before, **values})
    if st.button("Start training", icon=":material/play_arrow:", type="primary", key="start"):
        # What the user changed, as on a command line: untouched options keep the trainer's defaults (for
        # condition quadrants, the completion model's own settings).
        options = {k: v for k, v in values.items()
                   if RELEVANT.get(k, lambda v: True)(values) and v != BY_NAME[k].default}  # fmt: skip
        try:
            jobs.check_options(options, data_roots=jobs.data_roots())
        except CVAEError as err:
            st.error(str(err)[:1].upper() + str(err)[1:] + ".")
            return
        _start(options)


def _current() -> dict[str, Any]:
    """The widgets' values from the last run of the script (for RELEVANT, before they are drawn)."""
    state = st.session_state
    return {o.name: state.get(f"f_{o.name}", o.default) for o in OPTIONS}


def runs_table() -> None:
    root = runs_root()
    rows = []
    for run in open_runs(root):
        last = (metrics(run.dir) or [{}])[-1]
        rows.append({"state": run.state_text, **({"owner": run.owner or "–"} if mode() else {}), "run": run.id,
                     "what": run.label, "test −ELBO (nats)": last.get("test_nelbo")})  # fmt: skip
    if rows:  # the owner second, before the long columns: whose run it is is what a class asks first
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"test −ELBO (nats)": st.column_config.NumberColumn(format="%.2f")})  # fmt: skip
