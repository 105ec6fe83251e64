"""The Train page's "Bounds and gaps" of a run that has ended: the bounds on -log p(x | y) loosest to tightest
and the amortization and approximation gaps (cvae.bounds), measured in a process of its own at a click and
drawn once bounds.json has them. While it measures, a fragment looks at its progress every POLL_S seconds; a
finished page has no timer.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from cvae import bounds, jobs
from cvae.errors import CVAEError
from cvae.progress import format_seconds
from cvae.runs import RunDir
from ui import plots
from ui.auth import can_manage, current_user, owner_note
from ui.runs import Run, metrics, stamp

POLL_S = 2.0


def bounds_section(run: Run) -> None:
    rows = metrics(run.dir)
    epoch = rows[-1].get("epoch") if rows else None
    if run.active or not isinstance(epoch, int) or not run.dir.latest_checkpoint.is_file():
        return  # training, or nothing to measure yet
    busy = bounds.measuring(run.dir)

    def part() -> None:
        if bounds.measuring(run.dir) != busy:
            st.rerun()  # it started or ended: the whole page again, with or without the timer
        _draw(run, epoch, busy)

    # A fresh fragment id each drawing, as the live panel's: an old timer never updates this one.
    part.__qualname__ = f"bounds_section.part_{uuid.uuid4().hex[:12]}"
    st.fragment(run_every=POLL_S if busy else None)(part)()


def _draw(run: Run, epoch: int, busy: bool) -> None:
    st.markdown("#### :material/stairs: Bounds and gaps")
    chart, measured = _figure(str(run.dir.path), _version(run.dir), epoch)
    status = bounds.read_status(run.dir)
    if busy:
        elapsed = format_seconds(max(0.0, time.time() - status.get("started", time.time())))
        st.progress(status["done"], text=f"**Measuring… {status['done']:.0%}** · {status['stage']} · {elapsed} so far")
    elif status.get("state") == "failed" or status.get("state") in bounds.MEASURING:
        why = status["message"] or "its process is gone"
        st.error(f"The last measurement ended without a result: {why}. Its output is in bounds.log in the run folder.")
    if chart is not None and measured is not None:
        st.plotly_chart(chart, key="bounds_chart", config={"displayModeBar": False})
        st.caption(
            f"Each dot: a bound on −log p(x | y), the mean over the first {measured.test_images} test images ± its "
            "standard error. The bounds share the images, so the gaps (means of per-image differences) are known "
            "far better than the bars. **Amortization gap**: what q fitted to each image "
            f"({measured.gap_steps} Adam steps, the model fixed) gains over the encoder's q. **Approximation "
            "gap**: what a Gaussian q still misses, measured to the tightest bound, itself above −log p(x | y): "
            "so the true gap is at least this (Cremer, Li & Duvenaud 2018). `cvae evaluate RUN --bounds "
            f"--test-subset {measured.test_images}` prints the same figures (it took "
            f"{format_seconds(measured.seconds)})."
        )  # fmt: skip
        return
    if busy:
        return
    st.caption(
        f"How tight is the test −ELBO? The first {bounds.BOUNDS_IMAGES} test images measured with the encoder's q, "
        "with q fitted to each image, and with the importance-weighted bound at K = 1, 10, 100 and 1000; the "
        "amortization and approximation gaps in nats. About a minute on a 2-core server, in the background."
    )  # fmt: skip
    if not can_manage(run):
        st.caption(f":material/lock: {owner_note(run)}")
        return
    if st.button("Measure the bounds", icon=":material/stairs:", key="measure_bounds", type="primary"):
        try:
            bounds.start(run.dir, current_user(), nice=jobs.train_nice())
        except CVAEError as err:
            st.error(f"Could not measure the bounds: {err}")
            return
        except OSError as err:
            st.error(f"Could not measure the bounds: {jobs.explain(err)}")
            return
        st.rerun()


def _version(run: RunDir) -> tuple:
    """What the drawn measurement depends on: bounds.json, and config.json's history (a resume can void it)."""
    return stamp(run.path / bounds.BOUNDS_FILE), stamp(run.config_path)


@st.cache_resource(max_entries=32, show_spinner=False)
def _figure(folder: str, version: tuple, epoch: int) -> tuple[go.Figure | None, bounds.Bounds | None]:
    """The chart of the model of `epoch`, built once per change of its files and shared by every tab."""
    measured = bounds.bounds_of(RunDir(Path(folder)), epoch)
    return (plots.freeze(plots.bounds_ladder(measured, epoch)), measured) if measured is not None else (None, None)
