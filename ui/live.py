"""The live view of one run: progress, curves and the newest reconstructions.

Drawn in a fragment that re-runs every POLL_S seconds while the run is active,
reading only the run folder; when the run ends, one full rerun redraws the page
without the timer, so a finished run costs nothing.
"""

from __future__ import annotations

import streamlit as st

from ui import plots
from ui.launcher import max_active
from ui.models import png_file
from ui.runs import Run, batches, eta_text, log_tail, metrics, open_run, runs_root

POLL_S = 1.5


def live_panel(run: Run) -> None:
    every = POLL_S if run.active else None

    @st.fragment(run_every=every)
    def panel() -> None:
        fresh = open_run(runs_root(), run.id)
        if (fresh.state, fresh.config is None) != (run.state, run.config is None):
            st.rerun()  # started, configured or ended: redraw the whole page (header, buttons, timer)
        _status(fresh)
        _curves(fresh)
        _pictures(fresh)

    panel()


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


def _log(run: Run) -> None:
    tail = log_tail(run.dir)
    if tail:
        with st.expander("Last lines of train.log", expanded=run.state != "interrupted"):
            st.code(tail, language=None)


def _nats(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _curves(run: Run) -> None:
    rows, brows = metrics(run.dir), batches(run.dir)
    if not brows:
        if run.active:
            st.caption("Curves appear with the first batches.")
        return
    st.plotly_chart(plots.batch_loss(brows), key="batch_chart", config={"displayModeBar": False})
    if rows:
        st.plotly_chart(plots.epoch_curves(rows), key="epoch_chart", config={"displayModeBar": False})
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
