"""The live view of one run: progress, curves and the newest reconstructions.

Drawn in a fragment that re-runs on a timer while the run is active, reading
only the run folder; when the run ends, one full rerun redraws the page without
the timer, so a finished run costs nothing. The timer is shared out: with up to
VIEWERS_AT_FULL_SPEED live tabs on the server each refreshes every POLL_S
seconds; with more, each refreshes less often (at most every MAX_POLL_S), so a
class of 30 watching runs costs the server about what 4 tabs do. A refresh
reads only the bytes the trainer appended since the last one, and the charts
are built once per change of the data and shared by every tab.
"""

from __future__ import annotations

import threading
import time
import uuid

import plotly.graph_objects as go
import streamlit as st

from cvae.jobs import max_active
from ui import plots
from ui.models import png_file
from ui.runs import Run, batches_versioned, eta_text, log_tail, metrics, open_run, runs_root, stamp

POLL_S = 1.5  # seconds between refreshes of a live run's tab while few tabs watch one
MAX_POLL_S = 10.0  # the slowest refresh, however many tabs watch
VIEWERS_AT_FULL_SPEED = 4  # live tabs the server refreshes every POLL_S; with more, each one waits longer
STALE_S = 3 * MAX_POLL_S  # a tab not heard from for this long is gone (closed, or on another page)


class Viewers:
    """The tabs watching a live run on this server (one per browser session), to share out the refreshes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def beat(self, viewer: str, now: float | None = None) -> int:
        """Note that `viewer` is watching; return how many tabs are."""
        now = time.time() if now is None else now
        with self._lock:
            self._seen[viewer] = now
            for other, seen in list(self._seen.items()):
                if now - seen > STALE_S:
                    del self._seen[other]
            return len(self._seen)

    def leave(self, viewer: str) -> None:
        with self._lock:
            self._seen.pop(viewer, None)


def poll_interval(viewers: int) -> float:
    """Seconds between one tab's refreshes when `viewers` tabs watch live runs: the server does about
    VIEWERS_AT_FULL_SPEED / POLL_S refreshes a second in all, each tab at least one per MAX_POLL_S."""
    return min(MAX_POLL_S, POLL_S * max(1.0, viewers / VIEWERS_AT_FULL_SPEED))


@st.cache_resource(show_spinner=False)
def viewers() -> Viewers:
    return Viewers()


def _viewer_id() -> str:
    if "live_viewer" not in st.session_state:
        st.session_state["live_viewer"] = uuid.uuid4().hex
    return st.session_state["live_viewer"]


def live_panel(run: Run) -> None:
    viewer = _viewer_id()
    if run.active:
        every = poll_interval(viewers().beat(viewer))
    else:
        every = None
        viewers().leave(viewer)

    def panel() -> None:
        fresh = open_run(runs_root(), run.id)
        if (fresh.state, fresh.config is None) != (run.state, run.config is None):
            st.rerun()  # started, configured or ended: redraw the whole page (header, buttons, timer)
        if every is not None and not every / 1.5 <= poll_interval(viewers().beat(viewer)) <= every * 1.5:
            st.rerun()  # many more (or fewer) tabs watch now: restart the timer at the new pace
        _status(fresh)
        _curves(fresh)
        _pictures(fresh)

    # A fresh fragment id for each drawing of the page: a refresh timer left from an
    # earlier visit to this page in the same session can then never update this one.
    panel.__qualname__ = f"live_panel.panel_{uuid.uuid4().hex[:12]}"
    st.fragment(run_every=every)(panel)()


def _status(run: Run) -> None:
    s = run.status
    epoch, epochs = int(s.get("epoch") or 0), int(s.get("epochs") or 0)
    batch, per = int(s.get("batch") or 0), int(s.get("batches") or 0)
    done = (epoch + (batch / per if per else 0)) / epochs if epochs else 0.0
    rows = metrics(run.dir)
    if run.state == "queued":
        st.info(f":material/hourglass_top: **{run.state_text.capitalize()}**: at most {max_active()} run(s) train at "
                f"once on this server; this one starts by itself when its turn comes. {s.get('message') or ''}")  # fmt: skip
    elif run.active:
        where = f"epoch {min(epoch + 1, epochs)} of {epochs}" + (f" · batch {batch} of {per}" if per else "")
        if run.state == "starting" and not per:
            where = "starting: loading the data and building the model"
        eta = eta_text(s, [r["seconds"] for r in rows if isinstance(r.get("seconds"), (int, float))])
        st.progress(min(max(done, 0.0), 1.0), text=f"**{where}** · {eta}")
    elif run.state == "finished":
        st.success(f"Finished: {epochs} epochs.")
    elif run.state == "stopped":
        st.warning(f"Stopped after epoch {epoch}. {s.get('message', '')}  Resume it to train more.")
    elif run.state == "interrupted":
        saved = "Resume it from its last checkpoint with one click above." if run.dir.latest_checkpoint.is_file() else (
            "It had no checkpoint yet: start it again.")  # fmt: skip
        st.error(f":material/power_off: **Interrupted** after epoch {epoch}: its process is gone (killed, out of "
                 f"memory or a server restart). {saved}")  # fmt: skip
        _log(run)
    elif run.state in ("failed", "unknown"):
        st.error(
            f"This run {run.state if run.state != 'unknown' else 'has no status'}: {s.get('message') or 'see the log below'}"
        )
        _log(run)
    if rows:
        last = rows[-1]
        cols = st.columns(4)
        cols[0].metric(
            "test −ELBO",
            _nats(last.get("test_nelbo")),
            help="negative ELBO on the test set, nats per image; lower is better",
        )
        cols[1].metric("reconstruction", _nats(last.get("test_recon")))
        cols[2].metric("KL", _nats(last.get("test_kl")))
        cols[3].metric("speed", f"{last.get('images_per_s') or 0:,.0f} img/s")
        if last.get("test_nelbo_refined") is not None:
            refined = last["test_nelbo_refined"]
            st.caption(
                f"With q refined for each test image by {last.get('refine_steps')} gradient steps, the final model's "
                f"test −ELBO is **{refined:.2f} nats**: the encoder's own guess leaves "
                f"{last['test_nelbo'] - refined:.2f} nats on the table (the amortization gap)."
            )


def _log(run: Run) -> None:
    tail = log_tail(run.dir)
    if tail:
        with st.expander("Last lines of train.log", expanded=run.state != "interrupted"):
            st.code(tail, language=None)


def _nats(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


@st.cache_resource(max_entries=32, show_spinner=False)
def _batch_figure(path: str, version: tuple[int, int], _rows: list[dict]) -> go.Figure:
    """The batch-loss chart, built once per change of the batch log and shared by every tab (never mutated)."""
    return plots.batch_loss(_rows)


@st.cache_resource(max_entries=32, show_spinner=False)
def _epoch_figure(path: str, version: tuple[int, int], _rows: list[dict]) -> go.Figure:
    return plots.epoch_curves(_rows)


def _curves(run: Run) -> None:
    brows, version = batches_versioned(run.dir)
    if not brows:
        if run.active:
            st.caption("Curves appear with the first batches.")
        return
    chart = _batch_figure(str(run.dir.batches_path), version, brows)
    st.plotly_chart(chart, key="batch_chart", config={"displayModeBar": False})
    rows = metrics(run.dir)
    if rows:
        chart = _epoch_figure(str(run.dir.metrics_path), stamp(run.dir.metrics_path), rows)
        st.plotly_chart(chart, key="epoch_chart", config={"displayModeBar": False})
    else:
        st.caption("Per-epoch train and test curves appear when the first epoch ends.")


def _pictures(run: Run) -> None:
    epochs = run.dir.epochs_with("recon_mean.png")
    truth = png_file(run.dir.artifacts / "truth.png", 2)
    if not epochs or truth is None:
        return
    newest = png_file(run.dir.artifact(epochs[-1], "recon_mean.png"), 2)
    left, right = st.columns(2)
    left.image(truth, caption="Test images (the fixed batch)")
    if newest is not None:
        right.image(newest, caption=f"Their reconstructions after epoch {epochs[-1]} (mean)")
