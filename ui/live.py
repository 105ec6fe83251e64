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
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cvae.figures import Export
from cvae.jobs import estimated_start, max_active
from cvae.ledger import alarm, valid_dims
from cvae.progress import format_seconds
from cvae.runs import RunDir, log_tail
from ui import plots, slides
from ui.models import png_file
from ui.profiling import profiled
from ui.runs import (
    Run,
    batches_versioned,
    latent_points,
    metrics,
    newest_pictures,
    open_run,
    runs_root,
    stamp,
)

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
        with profiled("live-refresh"):
            _status(fresh)
            _pictures(fresh)
            _curves(fresh)

    # A fresh fragment id for each drawing of the page: a refresh timer left from an
    # earlier visit to this page in the same session can then never update this one.
    panel.__qualname__ = f"live_panel.panel_{uuid.uuid4().hex[:12]}"
    st.fragment(run_every=every)(panel)()


def status_line(run: Run) -> None:
    """Where a run stands, in one box: its queue position, its progress and time left, or how it ended."""
    _status(run, numbers=False)


def _status(run: Run, numbers: bool = True) -> None:
    s = run.status
    epoch, epochs = int(s.get("epoch") or 0), int(s.get("epochs") or 0)
    batch, per = int(s.get("batch") or 0), int(s.get("batches") or 0)
    done = (epoch + (batch / per if per else 0)) / epochs if epochs else 0.0
    rows = metrics(run.dir)
    if run.state == "queued" and s.get("backend") == "slurm":
        job = f" (job {s['job_id']})" if s.get("job_id") else ""
        st.info(f":material/hourglass_top: **Queued on the cluster**: {s.get('cluster') or 'submitted'}{job}. "
                "It starts when Slurm gives it a node; this page follows it by itself.")  # fmt: skip
    elif run.state == "queued":
        slots, pool = s.get("slots") or max_active(), s.get("pool") or "cpu"
        where = "on this server" if pool == "cpu" else "on this server's GPUs" if pool == "gpu" else f"on {pool}"
        wait = _start_in(str(run.dir.path), int(slots))
        when = "it starts by itself when its turn comes" if wait is None else "it starts in a moment" if (
            wait < 2) else f"it starts in **about {format_seconds(wait)}**, by the measured pace of the runs ahead"  # fmt: skip
        st.info(f":material/hourglass_top: **{run.state_text.capitalize()}**: at most {slots} run(s) train at "
                f"once {where}; {when}. {s.get('message') or ''}")  # fmt: skip
    elif run.active:
        where = f"epoch {min(epoch + 1, epochs)} of {epochs}" + (f" · batch {batch} of {per}" if per else "")
        if run.state == "starting" and not per:
            where = "starting: loading the data and building the model"
        seconds = [r["seconds"] for r in rows if isinstance(r.get("seconds"), (int, float))]
        eta = eta_text(s, seconds, batches_versioned(run.dir)[0])
        device = f" · on {run.device_text}" if run.device_text else ""
        if s.get("backend") == "slurm":
            job = f" (job {s['job_id']})" if s.get("job_id") else ""
            device += f" · {s.get('cluster') or 'on the cluster'}{job}"
        done = min(max(done, 0.0), 1.0)
        # The share in figures too: at a few percent the bar itself is a sliver, hard to see from a room's back.
        share = f"{done:.0%} · " if per else ""
        st.progress(done, text=f"**{share}{where}**{device} · {eta}")
    elif run.state == "finished":
        device = f" on {run.device_text}" if run.device_text else ""  # the badge above says "finished" too: one line
        st.caption(f":material/check_circle: Finished: {epochs} epochs{device}.")
    elif run.state == "stopped":
        st.warning(stop_text(epoch, run.dir.latest_checkpoint.is_file()))
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
    if numbers:
        _numbers(run, rows)


@st.cache_data(ttl=5, max_entries=256, show_spinner=False)
def _start_in(folder: str, slots: int) -> float | None:
    """A queued run's estimated wait (cvae.jobs.estimated_start), shared by its tabs for a few seconds: it
    reads every run of the queue."""
    run = RunDir(Path(folder))
    try:
        return estimated_start(run.path.parent, run, slots)
    except OSError:
        return None


def stop_text(epoch: int, has_checkpoint: bool) -> str:
    """The stopped run's message: where it stopped and what was kept, in whole sentences."""
    if not has_checkpoint or epoch < 1:
        return f"**Stopped** during epoch {epoch + 1}, before its first checkpoint: start it again to train."
    return (
        f"**Stopped** during epoch {epoch + 1}. The model of epoch {epoch} is kept: "
        f"**Resume from epoch {epoch}** trains on from there."
    )


SETTLE_BATCHES = 3  # the first batches of an epoch are slow (warm-up, data loading): not used for the rate
MIN_BATCHES = 5  # batches of the current epoch, after those, before the rate is trusted


def batch_seconds(status: dict, batch_rows: list[dict]) -> float | None:
    """Seconds per batch in the current epoch, from the trainer's own batch log (its `time` stamps), once a few
    batches are in; None before. Unlike the time since the epoch started, this leaves out the start-up."""
    current = int(status.get("epoch") or 0) + 1
    tail = [r for r in batch_rows[-400:] if r.get("epoch") == current and isinstance(r.get("time"), (int, float))]
    tail = [r for r in tail if int(r.get("batch") or 0) > SETTLE_BATCHES]
    if len(tail) < MIN_BATCHES:
        return None
    a, b = tail[0], tail[-1]
    steps, seconds = int(b["batch"]) - int(a["batch"]), float(b["time"]) - float(a["time"])
    return seconds / steps if steps > 0 and seconds > 0 else None


def eta_text(status: dict, epoch_seconds: list[float], batch_rows: list[dict]) -> str:
    """Time left: the finished epochs' mean duration once there are some; in the first epoch, the batch rate
    measured in the batch log, so the estimate settles after a few batches."""
    epoch, epochs = int(status.get("epoch") or 0), int(status.get("epochs") or 0)
    batch, per = int(status.get("batch") or 0), int(status.get("batches") or 0)
    if not epochs:
        return "estimating time left…"
    rate = batch_seconds(status, batch_rows) if per else None
    if epoch_seconds:
        per_epoch = float(np.mean(epoch_seconds[-5:]))
        in_epoch = rate * batch if rate is not None else (batch / per * per_epoch if per else 0.0)
    elif rate is not None:
        per_epoch, in_epoch = rate * per, rate * batch
    else:
        return "estimating time left…"
    left = max(0.0, (epochs - epoch) * per_epoch - min(in_epoch, per_epoch))
    return f"about {format_seconds(left)} left"


def _numbers(run: Run, rows: list[dict]) -> None:
    """The four numbers: the last epoch's test figures and speed; before the first epoch ends, the running
    batch figures (smoothed), so a class sees numbers from the start."""
    last = rows[-1] if rows else {}
    dims, active = valid_dims(last.get("test_kl_dims")), last.get("test_active_units")
    ledger = dims is not None and isinstance(active, int) and not isinstance(active, bool)
    cols = st.columns(5 if ledger else 4)
    if rows:
        cols[0].metric("test −ELBO", _nats(last.get("test_nelbo")),
                       help="negative ELBO on the test set, nats per image; lower is better")  # fmt: skip
        cols[1].metric("reconstruction", _nats(last.get("test_recon")))
        cols[2].metric("KL", _nats(last.get("test_kl")))
        if ledger:
            cols[3].metric("active units", f"{active} of {len(dims)}",
                           help="latent dimensions the model uses: their posterior mean varies over the test "
                                "images (the ELBO's ledger, further down)")  # fmt: skip
        cols[-1].metric("speed", f"{last.get('images_per_s') or 0:,.0f} img/s")
        if last.get("test_nelbo_refined") is not None:
            refined = last["test_nelbo_refined"]
            st.markdown(
                f":material/tune: **Refined test −ELBO: {refined:.2f} nats.** With q refined for each test image by "
                f"{last.get('refine_steps')} gradient steps, the final model's bound is tighter: the encoder's own "
                f"guess leaves **{last['test_nelbo'] - refined:.2f} nats** on the table (the amortization gap)."
            )
        return
    brows = batches_versioned(run.dir)[0][-50:]
    if not brows:
        return

    def mean(key: str) -> float | None:
        values = [r[key] for r in brows if isinstance(r.get(key), (int, float))]
        return float(np.mean(values)) if values else None

    cols[0].metric("batch −ELBO", _nats(mean("loss")), help="mean of the last 50 logged batches, training images")
    cols[1].metric("reconstruction", _nats(mean("recon")))
    cols[2].metric("KL", _nats(mean("kl")))
    rate = batch_seconds(run.status, batches_versioned(run.dir)[0])
    batch_size = run.config.train.batch_size if run.config else 0
    cols[-1].metric("speed", f"{batch_size / rate:,.0f} img/s" if rate and batch_size else "–")


def _log(run: Run) -> None:
    tail = log_tail(run.dir)
    if tail:
        with st.expander("Last lines of train.log", expanded=run.state != "interrupted"):
            st.code(tail, language=None)


def _nats(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


@st.cache_resource(max_entries=32, show_spinner=False)
def _batch_figure(path: str, version: tuple[int, int], smoothing: float, recent: float, _rows: list[dict]) -> go.Figure:
    """The batch-loss chart, built once per change of the batch log (and view) and shared by every tab (never
    mutated)."""
    return plots.freeze(plots.batch_loss(_rows, smoothing=smoothing, recent=recent))


@st.cache_resource(max_entries=32, show_spinner=False)
def _epoch_figure(path: str, version: tuple[int, int], _rows: list[dict]) -> go.Figure:
    return plots.freeze(plots.epoch_curves(_rows))


SMOOTHING = {0.0: "off", 0.6: "a little", 0.9: "more", 0.99: "a lot"}
RECENT = {1.0: "all steps", 0.25: "last quarter", 0.05: "last 5 %"}


def _curves(run: Run) -> None:
    brows, version = batches_versioned(run.dir)
    if not brows:
        if run.active:
            st.caption("Curves appear with the first batches.")
        return
    smoothing, recent = st.session_state.get("loss_smoothing"), st.session_state.get("loss_recent")
    # "a little" by default: with more, the smoothed line lags the falling loss of the first epoch by tens of nats
    smoothing = 0.6 if smoothing is None else smoothing  # None: the user un-picked the chosen option
    recent = 1.0 if recent is None else recent
    # Redrawn once at least 1 % more batches are in (every new batch early on): the chart shows at most 1,500
    # points, so a newer one would look the same, and every tab refreshing would rebuild it for nothing.
    shown = len(brows) - len(brows) % max(1, len(brows) // 100)
    chart = _batch_figure(str(run.dir.batches_path), (version[0], shown), smoothing, recent, brows[:shown])
    st.plotly_chart(chart, key="batch_chart", config={"displayModeBar": False})
    with st.container(horizontal=True, vertical_alignment="center"):
        st.segmented_control("Smoothing", list(SMOOTHING), format_func=SMOOTHING.get, key="loss_smoothing",
                             default=0.6, help="Exponential moving average of the batch losses, as in TensorBoard")  # fmt: skip
        st.segmented_control("Show", list(RECENT), format_func=RECENT.get, key="loss_recent", default=1.0,
                             help="Zoom in on the newest batches")  # fmt: skip
    rows = metrics(run.dir)
    if rows:
        chart = _epoch_figure(str(run.dir.metrics_path), stamp(run.dir.metrics_path), rows)
        st.plotly_chart(chart, key="epoch_chart", config={"displayModeBar": False})
        last = rows[-1].get("epoch")
        if isinstance(last, int) and last >= 1:
            slides.download(run, [(f"Epochs 1–{last}", Export("curves", last))], "train_slides")
    else:
        st.caption("Per-epoch train and test curves appear when the first epoch ends.")
    _ledger(run, rows)


def _ledger(run: Run, rows: list[dict]) -> None:
    """The ELBO's ledger of the newest epoch: active units, the alarm, the KL per dimension."""
    if not rows:
        return
    last = rows[-1]
    dims = valid_dims(last.get("test_kl_dims"))
    if dims is None:
        return  # a run from before the ledger, or a crafted line
    warning = alarm(dims, last.get("test_active_units"))
    active = last.get("test_active_units")
    st.markdown(f"#### The ELBO's ledger: **{active if isinstance(active, int) else '?'} of {len(dims)}** latent "
                "dimensions active")  # fmt: skip
    if warning:
        st.warning(warning, icon=":material/warning:")
    chart = _ledger_figure(str(run.dir.metrics_path), stamp(run.dir.metrics_path), rows)
    if chart is not None:
        st.plotly_chart(chart, key="ledger_chart", config={"displayModeBar": False})
    cfg = run.config.model if run.config is not None else None
    shaped = []
    if cfg is not None and cfg.kl_weight != 1:
        shaped.append(f"β = {cfg.kl_weight:g}")
    if cfg is not None and cfg.kl_warmup_epochs:
        shaped.append(f"a KL warm-up over {cfg.kl_warmup_epochs:g} epochs")
    if cfg is not None and cfg.free_bits:
        shaped.append(f"free bits λ = {cfg.free_bits:g} nats per dimension")
    st.caption(
        "A dimension is active when its posterior mean varies over the test images (variance above 0.01, Burda et "
        "al. 2016); the KL of the others is near 0. "
        + (f"Trained with {', '.join(shaped)}: the dotted line above is that objective, and every −ELBO shown is "
           "still the true bound (β = 1)." if shaped else "")
    )  # fmt: skip


@st.cache_resource(max_entries=32, show_spinner=False)
def _ledger_figure(path: str, version: tuple[int, int], _rows: list[dict]) -> go.Figure | None:
    fig = plots.kl_ledger(_rows)
    return plots.freeze(fig) if fig is not None else None


def _pictures(run: Run) -> None:
    """The fixed test images, their newest reconstructions and the latent scatter, side by side: while an epoch
    trains, its live pictures (refreshed every few seconds), so a class sees its models learn from the start."""
    truth = png_file(run.dir.artifacts / "truth.png", 2)
    shown = newest_pictures(run.dir, run.active)
    if truth is None or shown is None:
        if run.active and run.config is not None:
            st.caption("Reconstructions and the latent space appear a second or two after training starts.")
        return
    when = (f"in epoch {shown['epoch']} (batch {shown['batch']} of {shown['batches']})" if "batch" in shown
            else f"after epoch {shown['epoch']}")  # fmt: skip
    left, middle, right = st.columns([1, 1, 1.25])
    left.image(truth, caption="Test images (a fixed batch)", output_format="PNG")
    recon = png_file(shown["recon"], 2)
    if recon is not None:
        middle.image(recon, caption=f"Their reconstructions {when}", output_format="PNG")
    try:
        z, labels = latent_points(run.dir, shown["latent"])
    except (OSError, ValueError):
        return  # being replaced, or not saved (a latent subset of 0): the next refresh shows it
    if len(z):
        names = run.class_names or [str(i) for i in range(int(labels.max()) + 1)]
        path = shown["latent"]
        right.plotly_chart(_latent_figure(str(path), stamp(path), tuple(names), z, labels), key="live_latent",
                           config={"displayModeBar": False, "staticPlot": True})  # fmt: skip
        how = f"; the 2 principal axes of the {z.shape[1]}-D means" if z.shape[1] > 2 else ""  # two lines at most
        right.caption(f"Where the encoder puts {len(z):,} test images {when}{how}")


@st.cache_resource(max_entries=32, show_spinner=False)
def _latent_figure(path: str, version: tuple[int, int], names: tuple[str, ...], _z, _labels) -> go.Figure:
    """The latent scatter of one picture set, built once per file version and shared by every tab."""
    fig = plots.latent_snapshot(_z, _labels, list(names), "", legend=True, height=340)
    # No title: the caption under it says what the points are (and how a PCA projects them above 2-D).
    fig.update_layout(title=None, margin=dict(l=10, r=10, t=10, b=10), legend=dict(title=None, font=plots.FONT))
    return plots.freeze(fig)
