"""The Train page's widgets: the new-run form, the empty state and the runs table.

The form is built from cvae.config's options (label, help, default, limits
and choices come from there), so it offers exactly the command line's options
with the command line's defaults; the quick demo is a named preset. Problems
are the config's own one-line messages.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from cvae import estimate, jobs
from cvae.config import BY_NAME, OPTIONS, QUICK_DEMO, Option
from cvae.errors import CVAEError
from cvae.progress import format_seconds
from cvae.runs import RunDir, active_runs
from ui.auth import current_user, mode
from ui.runs import metrics, open_runs, runs_root
from ui.sidebar import select

BUILTIN = {"MNIST": "MNIST (digits, 28×28, grey)", "CIFAR10": "CIFAR-10 (photos, 32×32, colour)"}
# Choices in words where the command line's spelling says little to a student.
SHOWN = {"condition": {"label": "CVAE: given the class", "none": "Plain VAE: no label",
                       "quadrants": "Digit completion: given part of the digit"}}  # fmt: skip

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


# A click that reaches the server twice (a double click, or a page that reconnects under load and sends its
# last click again) starts one run: the same options from the same browser session this soon after a start
# show the run that start made. The epochs are left out of the comparison: a sized quick demo's may differ.
REPEAT_S = 15.0
LAST_START = "last_start"


def _same_start(options: dict[str, Any]) -> str | None:
    last = st.session_state.get(LAST_START)
    if not last or time.monotonic() - last["at"] > REPEAT_S:
        return None
    strip = lambda o: {k: v for k, v in o.items() if k != "epochs"}  # noqa: E731 - two uses, right here
    return last["run"] if strip(last["options"]) == strip(options) else None


def launch(options: dict[str, Any], start: Callable[..., RunDir] | None = None) -> str | None:
    """Start a run and show it next (the form folds away: the new run is what matters now); the one-line
    problem when it could not start, else None. The same start again within REPEAT_S shows the first's run.
    `start`: how, given the user and the data roots (a twin's cvae.twins.fork); else jobs.start of `options`."""
    again = _same_start(options)
    if again:
        select(again)
        return None
    start = start or functools.partial(jobs.start, runs_root(), options)
    try:
        run = start(user=current_user(), data_roots=jobs.data_roots())
    except CVAEError as err:
        return f"Could not start the run: {err}"
    except OSError as err:  # disk full, read-only runs folder: one sentence, no traceback
        return f"Could not start the run: {jobs.explain(err)}"
    st.session_state[LAST_START] = {"at": time.monotonic(), "options": dict(options), "run": run.id}
    select(run.id)
    return None


def _start(options: dict[str, Any]) -> None:
    problem = launch(options)
    if problem:
        st.error(problem)
    else:
        st.rerun()


WARMED = "trainers_warmed"
START_PROBLEM = "quick_demo_problem"  # why the last Quick demo click could not start one, shown by the page
START_NOTE = "quick_demo_note"  # how the last Quick demo click's run was sized, shown by the page


def warm_up_trainers() -> None:
    """Once per browser session: start the runs folder's fork server (cvae.forkserver), so the runs this session
    starts (and its classmates') start warm, in milliseconds, instead of each importing torch; and have the
    quick demo's time on this server measured (once an hour), so a click can size the demo at once."""
    if st.session_state.get(WARMED):
        return
    st.session_state[WARMED] = True
    if estimate.enabled():
        estimates().get(demo_alone(), ttl=SIZING_TTL_S, quiet_only=True)  # before the class clicks, once an hour
    if not jobs.fork_server_on():
        return
    from cvae import forkserver

    forkserver.ensure(runs_root())


def ask_for_quick_demo() -> None:
    """A Quick demo button's callback: it starts the library's preset (cvae.config.QUICK_DEMO, by name) before the
    page runs, so the click counts even when the page it was on has changed meanwhile (a classmate's run made
    the empty state the runs view), and the page draws the new run at once (the run picker is not drawn yet)."""
    options = quick_demo_now()
    problem = launch(options)
    if problem:
        st.session_state[START_PROBLEM] = problem  # shown by the page (a callback draws nothing)
    elif "epochs" in options:
        st.session_state[START_NOTE] = (
            f"The quick demo is sized to this server: {options['epochs']} epoch{'s' * (options['epochs'] != 1)} "
            f"instead of {QUICK_DEMO['epochs']}, so that it ends within about "
            f"{format_seconds(estimate.QUICK_DEMO_BUDGET_S)} while the runs of the class share the CPU.")  # fmt: skip


def quick_demo_now() -> dict[str, Any]:
    """The quick demo's options for a click now, sized to this server and to the runs sharing it
    (cvae.estimate.sized_quick_demo), from the demo's measured time with every core."""
    if not estimate.enabled():
        return dict(jobs.QUICK_DEMO_OPTIONS)
    alone = estimates().get(demo_alone(), ttl=SIZING_TTL_S, quiet_only=True)
    sharing = active_runs(runs_root())
    return estimate.sized_quick_demo(alone if isinstance(alone, estimate.Estimate) else None, sharing)


def demo_alone() -> dict[str, Any]:
    return {**jobs.QUICK_DEMO_OPTIONS, "threads": estimate.available_cores()}


def start_problem() -> None:
    """The page's one line for a Quick demo click that could not start, or was sized (`ask_for_quick_demo`)."""
    problem = st.session_state.pop(START_PROBLEM, None)
    if problem:
        st.error(problem)
    note = st.session_state.pop(START_NOTE, None)
    if note:
        st.info(note, icon=":material/speed:")


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


def option_widget(opt: Option, where: Any, values: dict[str, Any], default: Any, key: str | None = None) -> Any:
    """One option's widget, from its declaration: a choice, a switch, a number or text, starting at `default`."""
    disabled = not RELEVANT.get(opt.name, lambda v: True)(values)
    common = dict(label=opt.label, help=opt.help, key=key or f"f_{opt.name}", disabled=disabled)
    if opt.choices:
        shown = SHOWN.get(opt.name) or dict(zip(opt.choices, opt.user_choices(), strict=True))
        if len(opt.choices) <= 2:  # a radio reads at a glance; more choices wrap: a select box
            return where.radio(options=list(opt.choices), format_func=shown.get, horizontal=True,
                               index=opt.choices.index(default), **common)  # fmt: skip
        return where.selectbox(options=list(opt.choices), format_func=shown.get, index=opt.choices.index(default),
                               **common)  # fmt: skip
    if opt.kind is bool:
        return where.checkbox(value=default, **common)
    if opt.kind in (int, float):
        low = None if opt.low is None or opt.low_open else opt.kind(opt.low)
        high = None if opt.high is None else opt.kind(opt.high)
        fmt = "%d" if opt.kind is int else "%g"
        value = where.number_input(min_value=low, max_value=high, value=default, format=fmt,
                                   placeholder="all" if opt.optional else None, **common)  # fmt: skip
        return None if value is None else opt.kind(value)
    return where.text_input(value=default, **common)


def _dataset(where: Any) -> str:
    folders = jobs.image_folders(jobs.data_roots())
    choices = [*BUILTIN, *folders]
    label = {**BUILTIN, **{f: f"Image folder: {f}" for f in folders}}
    return where.selectbox("Dataset", choices, format_func=label.get, key="f_dataset",
                           help="MNIST, CIFAR-10, or an image folder (one sub-folder per class) under the server's "
                                f"data folders: {', '.join(str(r) for r in jobs.data_roots())}")  # fmt: skip


def new_run_form() -> None:
    """Every option of the command line, starting from defaults sized to this server, with the chosen settings'
    measured time before Start; checked before anything starts."""
    sized = sized_defaults()
    if sized is None:
        _poll_until(lambda: sized_defaults() is not None,
                    ":material/timer: Measuring this server's speed, to size the form's defaults (once for the "
                    "whole class)…")  # fmt: skip
        return
    main = [o for o in OPTIONS if o.form == "main" and o.name != "dataset"]
    more = [o for o in OPTIONS if o.form == "more"]
    values: dict[str, Any] = {"dataset": _dataset(st)}
    before = _current(sized)
    columns = st.columns(3)
    for k, opt in enumerate(main):
        values[opt.name] = option_widget(opt, columns[k % 3], {**before, **values}, sized.get(opt.name, opt.default))
    with st.expander("More options"):
        columns = st.columns(4)
        for k, opt in enumerate(more):
            values[opt.name] = option_widget(
                opt, columns[k % 4], {**before, **values}, sized.get(opt.name, opt.default)
            )
    # What the user chose, as on a command line: options left at the trainer's defaults are not passed (for
    # condition quadrants, the completion model's own settings apply to them).
    options = {k: v for k, v in values.items()
               if RELEVANT.get(k, lambda v: True)(values) and v != BY_NAME[k].default}  # fmt: skip
    start, when = st.columns([1, 4], vertical_alignment="center")
    if start.button("Start training", icon=":material/play_arrow:", type="primary", key="start"):
        try:
            jobs.check_options(options, data_roots=jobs.data_roots())
        except CVAEError as err:
            st.error(str(err)[:1].upper() + str(err)[1:] + ".")
            return
        _start(options)
    with when:
        time_estimate(options)
    if SIZED_BECAUSE in st.session_state:  # set only where the form starts smaller than the command line
        st.caption(st.session_state[SIZED_BECAUSE])


# ------------------------------------------------------------- measured time before Start

ESTIMATE_TTL_S = 600.0  # a measurement holds this long: the server's load changes
SIZING_TTL_S = 3600.0  # the server's speed for the form's defaults: measured once an hour at most
FORM_BUDGET_S = 600.0  # the form's defaults train within this long on this server (a lab exercise), or get smaller
SIZED, SIZED_BECAUSE = "form_sized_defaults", "form_sized_because"


class Estimates:
    """Measured estimates (cvae.estimate, in a process of its own), shared by every session of the app and
    measured one at a time in the background: a page never waits for one, and a class asking for the same
    settings pays once."""

    def __init__(self) -> None:
        self.lock, self.one_at_a_time = threading.Lock(), threading.Lock()
        self.done: dict[tuple, tuple[float, estimate.Estimate | str]] = {}
        self.pending: dict[tuple, threading.Thread] = {}

    def key(self, options: dict[str, Any]) -> tuple:
        root = runs_root()  # the threads it is measured with: the options' own, else the run's share now
        return str(root), tuple(jobs.build_argv(options)), options.get("threads") or estimate.threads_now(root)

    def get(self, options: dict[str, Any], ttl: float = ESTIMATE_TTL_S,
            quiet_only: bool = False) -> estimate.Estimate | str | None:  # fmt: skip
        """The estimate (or the one-line reason there is none) for `options` now; None while it is measured
        (started if it is not). `quiet_only`: a measurement of the server alone, so an old one is kept, rather
        than measured anew, while runs train."""
        key = self.key(options)
        with self.lock:
            got = self.done.get(key)
            if got is not None and (time.time() - got[0] < ttl or quiet_only and active_runs(runs_root())):
                return got[1]
            thread = self.pending.get(key)
            if thread is None:
                thread = threading.Thread(target=self._measure, args=(key, dict(options)), daemon=True)
                self.pending[key] = thread
                thread.start()
        return None

    def _measure(self, key: tuple, options: dict[str, Any]) -> None:
        with self.one_at_a_time:
            try:
                result: estimate.Estimate | str = estimate.in_subprocess(options, runs_root(), nice=jobs.train_nice())
            except CVAEError as err:
                result = str(err)
            except OSError as err:
                result = jobs.explain(err)
        with self.lock:
            self.done[key] = (time.time(), result)
            self.pending.pop(key, None)


@st.cache_resource
def estimates() -> Estimates:
    return Estimates()


def sized_defaults() -> dict[str, Any] | None:
    """The form's starting values on this server: the command line's, unless the reference's conv net would
    take longer than FORM_BUDGET_S here (a CPU server: hours); then the MLP, and fewer epochs if even that is
    too long. None while this is measured (in the background: the page stays usable). Decided once per browser
    session (a form's defaults do not move under a student), from measurements the whole class shares."""
    if SIZED in st.session_state:
        return st.session_state[SIZED]
    if not estimate.enabled():
        return {}
    reference = estimates().get({}, ttl=SIZING_TTL_S)
    sized: dict[str, Any] = {}
    if isinstance(reference, estimate.Estimate) and reference.seconds > FORM_BUDGET_S:
        sized["arch"] = "mlp"
        small = estimates().get(sized, ttl=SIZING_TTL_S)
        if small is None:
            return None
        if isinstance(small, estimate.Estimate) and small.seconds > FORM_BUDGET_S:
            sized["epochs"] = max(1, min(small.epochs, small.epochs_within(FORM_BUDGET_S)))
        st.session_state[SIZED_BECAUSE] = (
            f"The reference's conv net would take {format_seconds(reference.seconds)} here, so the form starts "
            "from the MLP; choose Architecture conv for the reference's.")  # fmt: skip
    elif reference is None:
        return None
    st.session_state[SIZED] = sized
    return sized


def _poll_until(ready: Any, text: str) -> None:
    """`text` in a fragment that looks again every 2 s, and reruns the page once `ready()` holds."""

    @st.fragment(run_every=2.0)
    def poll() -> None:
        if ready():
            st.rerun()
        st.caption(text)

    poll()


def time_estimate(options: dict[str, Any]) -> None:
    """The chosen settings' time on this server, measured (cvae.estimate) in the background."""
    if not estimate.enabled():
        return
    got = estimates().get(options)
    if got is None:
        _poll_until(lambda: estimates().get(options) is not None,
                    ":material/timer: Measuring these settings on this server, for a time estimate…")  # fmt: skip
    elif isinstance(got, str):
        st.caption(f":material/timer: No time estimate: {got}.")
    else:
        busy = estimate.threads_now(runs_root()) < estimate.available_cores()
        st.markdown(f":material/timer: **About {format_seconds(got.seconds)}** on this server"
                    f"{', as busy as it is now' if busy else ''}: {got.epochs} epoch{'s' * (got.epochs != 1)} of "
                    f"{format_seconds(got.per_epoch)} at {got.images_per_s:,.0f} images/s (measured on these "
                    "settings)", help=got.describe())  # fmt: skip


def _current(sized: dict[str, Any]) -> dict[str, Any]:
    """The widgets' values from the last run of the script (for RELEVANT, before they are drawn)."""
    state = st.session_state
    return {o.name: state.get(f"f_{o.name}", sized.get(o.name, o.default)) for o in OPTIONS}


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
