"""Class wall: every run of the lecture at once, as cards on a projector (ui.wall)."""

import streamlit as st

from ui.auth import mode
from ui.profiling import profiled
from ui.runs import open_runs, runs_root
from ui.wall import SINCE, cards, since, wall_html

EVERY_S = 5.0  # while a run trains: its pictures change every few seconds (the trainers' previews)
IDLE_S = 15.0  # while none does: often enough to see a classmate's new run appear

title, span, words = st.columns([5, 4, 4], vertical_alignment="center")
title.title(":material/grid_view: Class wall")
chosen = span.segmented_control("Runs started", list(SINCE), format_func=SINCE.get, default="today",
                                key="wall_since", label_visibility="collapsed") or "all"  # fmt: skip
needle = words.text_input("Filter", key="wall_filter", placeholder="filter: name, owner, z=2, β=4…",
                          label_visibility="collapsed").strip().lower()  # fmt: skip
owners = mode() is not None  # as the All-runs table: whose run it is, where sign-in is on
training = any(run.active for run in open_runs(runs_root()))
CARD = (
    "Each card: the run's test −ELBO after its last epoch (nats per image, lower is better), its state, its curve "
    "so far, its newest reconstructions and what sets it apart from most runs. Click a card to open the run."
)


@st.fragment(run_every=EVERY_S if training else IDLE_S)
def wall() -> None:
    with profiled("wall-refresh"):
        everything = open_runs(runs_root())  # the runs this user may see, newest first
        if any(run.active for run in everything) != training:
            st.rerun()  # a run started, or the last one ended: the page sets the refresh's pace anew
        shown, usual = cards(since(everything, chosen), owners)
        if needle:
            shown = [c for c in shown if needle in f"{c.name} {c.owner or ''} {c.differs} {c.run_id}".lower()]
        counts = [f"{sum(c.state in states for c in shown)} {word}" for word, states in
                  (("training", ("starting", "running")), ("queued", ("queued",)), ("finished", ("finished",)))]  # fmt: skip
        most = " · ".join(usual[:4]) + (f" and {len(usual) - 4} more" if len(usual) > 4 else "")
        line = f"**{len(shown)}** of {len(everything)} runs{', filtered' if needle else ''} · {' · '.join(counts)}"
        st.caption(
            line + (f" · most runs: {most}" if usual else ""), help=f"{CARD} Most runs: {' · '.join(usual) or '–'}."
        )
        if not shown:
            st.info("No runs to show: start one on the **Train** page, or choose *all runs* above.")
            return
        st.html(wall_html(shown))


wall()
