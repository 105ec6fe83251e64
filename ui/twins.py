"""Twin runs in the app: the Train page's "Fork as a twin" control, and a run beside its twin at one epoch.

A twin is started by cvae.twins.fork through the Train page's own `launch` (the form's start: its one-line
problem, the double-click guard, the new run shown next). The side-by-side view reuses the Compare page's
curves (plots.compare_curves), the latent snapshot (plots.latent_snapshot) and the run readers (ui.runs).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cvae import twins
from cvae.config import BY_NAME
from cvae.errors import CVAEError
from cvae.names import what_differs
from cvae.runs import read_numeric_jsonl
from cvae.training import resolve_options
from ui import plots
from ui.models import png_file
from ui.runs import Run, latent_points, metrics, open_run, runs_root, stamp
from ui.sidebar import display_name
from ui.train_form import RELEVANT, launch, option_widget


def fork_control(run: Run) -> None:
    """Pick one setting and its new value; Start the twin (same options, seed and batches)."""
    try:
        values = resolve_options(twins.parent_options(run.dir))
    except CVAEError as err:
        st.caption(f"This run cannot be forked: {err}.")
        return
    # The settings of the form that matter for this run (a learned σ only for a Gaussian decoder, ...).
    settings = [n for n in twins.SETTINGS if BY_NAME[n].form and RELEVANT.get(n, lambda v: True)(values)]
    st.caption("A new run with this run's settings, seed and batches in the same order, and one setting changed: "
               "then the **Twin runs** page shows the two side by side, epoch by epoch.")  # fmt: skip
    if partners(run):
        st.page_link("app_pages/twins.py", label="This run's twins, side by side", icon=":material/call_split:",
                     query_params={"run": run.id})  # fmt: skip
    pick, value_at, go_at = st.columns([2, 2, 1], vertical_alignment="bottom")
    name = pick.selectbox("Setting to change", settings, format_func=lambda n: BY_NAME[n].label, key="twin_setting",
                          index=settings.index("kl_weight") if "kl_weight" in settings else 0)  # fmt: skip
    value = option_widget(BY_NAME[name], value_at, values, values[name], key=f"twin_value_{name}")
    if go_at.button("Start the twin", icon=":material/call_split:", key="twin_start", type="primary"):
        start = functools.partial(twins.fork, runs_root(), run.dir, {name: value})
        problem = launch({"twin_of": run.id, name: value}, start=start)
        if problem:
            st.error(problem)
        else:
            st.rerun()


def partners(run: Run) -> list[tuple[Run, Run, dict]]:
    """(parent, twin, record) for each twin pair `run` is in, as twin or as parent, that this user may see."""
    root = runs_root()
    record = twins.read_twin(run.dir)
    pairs = [(record["parent"], run.id, record)] if record else []
    pairs += [(run.id, child.id, twins.read_twin(child)) for child in twins.twins_of(root, run.id)]
    shown = []
    for parent_id, twin_id, rec in pairs:
        try:
            shown.append((open_run(root, parent_id), open_run(root, twin_id), rec))
        except CVAEError:
            continue  # not shared with this user
    return [pair for pair in shown if pair[0].dir.path.is_dir() and pair[2] is not None]  # a parent deleted: none


def common_epochs(a: Run, b: Run) -> list[int]:
    """The finished epochs whose reconstructions both runs have (their latent codes, where they kept them)."""
    return sorted(set(a.dir.epochs_with("recon_mean.png")) & set(b.dir.epochs_with("recon_mean.png")))


def legend(a: Run, b: Run, record: dict) -> list[str]:
    """What differs between the pair's settings in plain words (the changed setting): ["KL weight β=1", "KL weight
    β=4"], from their configs as Compare names runs, or from the twin's record before both have one."""
    if a.raw_config and b.raw_config:
        words = what_differs([{k: r.raw_config.get(k) or {} for k in ("data", "model", "train")} for r in (a, b)])
        if all(words):
            return words
    return list(twins.change_words(record))


def side_by_side(a: Run, b: Run, record: dict, epoch: int) -> None:
    """Both curves on one chart (the epoch marked), then each run's reconstructions and latent scatter at `epoch`."""
    words, by_id, root = legend(a, b, record), plots.run_colors([a.id, b.id]), runs_root()
    colors = [by_id[r.id] for r in (a, b)]
    curve, left, right = st.columns([1.25, 1, 1])
    names = [f"{w} ({role})" for w, role in zip(words, ("parent", "twin"), strict=True)]
    curve.plotly_chart(_curves(a, b, names, colors, epoch), key="twin_curves", config={"displayModeBar": False})
    for column, run, word, color, role in ((left, a, words[0], colors[0], "parent"), (right, b, words[1], colors[1],
                                                                                       "twin")):  # fmt: skip
        nelbo = {r.get("epoch"): r for r in metrics(run.dir)}.get(epoch, {}).get("test_nelbo")
        column.markdown(f"<span style='color:{color}'>■</span> **{word}**", unsafe_allow_html=True)
        image = png_file(run.dir.artifact(epoch, "recon_mean.png"), 2)
        if image is None:
            column.warning(f"The reconstructions of epoch {epoch} cannot be read.")
        else:
            column.image(image, output_format="PNG", width="stretch")
        figure = f"{nelbo:.2f} nats" if isinstance(nelbo, (int, float)) else "–"
        column.caption(f"The {role}, {display_name(root, run.id)}: reconstructions after epoch {epoch}, test −ELBO "
                       f"{figure}")  # fmt: skip
    _latents(a, b, words, epoch)


def _curves(a: Run, b: Run, names: list[str], colors: list[str], epoch: int) -> go.Figure:
    paths = [r.dir.metrics_path for r in (a, b)]
    return _curve_figure(tuple(map(str, paths)), tuple(map(stamp, paths)), tuple(names), tuple(colors), epoch)


@st.cache_resource(max_entries=16, show_spinner=False)
def _curve_figure(paths: tuple[str, ...], versions: tuple, names: tuple[str, ...], colors: tuple[str, ...],
                  epoch: int) -> go.Figure:  # fmt: skip
    series = [(name, read_numeric_jsonl(Path(path), "epoch")) for name, path in zip(names, paths, strict=True)]
    fig = plots.compare_curves(series, "nelbo", "Test −ELBO per epoch (nats per image)", colors=list(colors))
    fig.add_vline(x=epoch, line=dict(color="#555", width=2, dash="dash"))
    every = np.array([r.get("test_nelbo") for _, rows in series for r in rows], dtype=float)
    fig.update_yaxes(range=plots.robust_range(every, skip=0.0, lo_q=0, hi_q=100))  # both whole, the first epochs too
    return plots.freeze(fig)


def _latents(a: Run, b: Run, names: list[str], epoch: int) -> None:
    """The two latent scatters of `epoch`, on the same axes."""
    try:
        points = [latent_points(r.dir, r.dir.artifact(epoch, "latent.npy")) for r in (a, b)]
    except (OSError, ValueError):
        st.caption(f"The latent codes of epoch {epoch} cannot be read.")
        return
    classes = a.class_names or [str(i) for i in range(int(max(p[1].max() for p in points)) + 1)]
    paths = [r.dir.artifact(epoch, "latent.npy") for r in (a, b)]
    figs = _latent_pair(tuple(map(str, paths)), tuple(map(stamp, paths)), tuple(names), tuple(classes), points)
    left, right = st.columns(2)
    left.plotly_chart(figs[0], key="twin_latent_a", config={"displayModeBar": False, "staticPlot": True})
    right.plotly_chart(figs[1], key="twin_latent_b", config={"displayModeBar": False, "staticPlot": True})
    dims = points[0][0].shape[1]
    st.caption(f"Where each encoder puts {len(points[0][0]):,} test images after epoch {epoch}, on the same axes"
               + (f" (each run's own 2 principal axes of its {dims}-D means)" if dims > 2 else "") + ".")  # fmt: skip


@st.cache_resource(max_entries=16, show_spinner=False)
def _latent_pair(paths: tuple[str, ...], versions: tuple, names: tuple[str, ...], classes: tuple[str, ...],
                 _points: list[tuple[np.ndarray, np.ndarray]]) -> tuple[go.Figure, go.Figure]:  # fmt: skip
    figs = [plots.latent_snapshot(z, labels, list(classes), name, legend=k == 1, height=420)
            for k, (name, (z, labels)) in enumerate(zip(names, _points, strict=True))]  # fmt: skip
    for axis in ("xaxis", "yaxis"):  # one range for both, the union of theirs: the same axes side by side
        ranges = [fig.layout[axis].range for fig in figs]
        both = [min(r[0] for r in ranges), max(r[1] for r in ranges)]
        for fig in figs:
            fig.layout[axis].range = both
    return tuple(plots.freeze(fig) for fig in figs)
