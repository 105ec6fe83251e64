"""Plotly figures: training curves and the animated latent space."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas  # noqa: F401 - see below
import plotly.colors
import plotly.graph_objects as go
from _plotly_utils.utils import convert_to_base64
from plotly.subplots import make_subplots

from cvae.bounds import Bounds, Figure

# The latent plane and the classes' look are the library's, shared with its slide figures (cvae.figures);
# frame_epochs, MAX_FRAMES and projection are named here for the pages that draw beside these plots.
from cvae.figures import MAX_FRAMES, class_styles, extent, frame_epochs, plane, projection  # noqa: F401

# pandas is imported above, whole, before any figure is built: plotly's validators take pandas from sys.modules
# as it stands, and while another thread of the server was importing it (another session's page, or Streamlit
# itself) they found a half-initialised module and the page failed ("partially initialized module 'pandas' has
# no attribute 'Series'"). An import statement waits for the other thread's import; sys.modules does not.

TRAIN, TEST = "#1f77b4", "#d62728"
INK = "#1f2230"  # tick labels and titles: about 15:1 on white (Streamlit's chart theme draws a light grey)
FONT = dict(size=16, color=INK)
TICKS = dict(size=16, color=INK)


class FrozenFigure(go.Figure):
    """A figure that is built once, cached, and drawn by many reruns and tabs, never changed again.

    `st.plotly_chart` turns a figure into a dict (a deep copy) and then into JSON (numpy arrays into base64) on
    every rerun; for the latent animation (up to 50 frames of 1,000 points) that was most of a page view's CPU.
    A frozen figure makes its dict once, arrays already encoded, and hands that out; everything else
    (`fig.frames`, `fig.layout`) reads as on any figure.
    """

    _spec: dict

    def to_dict(self) -> dict:
        return dict(self._spec)  # a shallow copy: the drawing code reads it, and never changes what is inside


def freeze(fig: go.Figure) -> FrozenFigure:
    """`fig` as a FrozenFigure (the same object; do not change it after this)."""
    spec = go.Figure.to_dict(fig)
    for trace in spec.get("data", []):
        trace.pop("uid", None)
    convert_to_base64(spec)
    fig.__class__ = FrozenFigure  # no second copy of the figure's data
    fig._spec = spec
    return fig


def _layout(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=50 if title else 30, b=10), font=FONT,
        title=dict(text=title, x=0, xanchor="left", font=dict(size=17, color=INK)) if title else None,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1, font=FONT),
    )  # fmt: skip
    fig.update_xaxes(tickfont=TICKS, title_font=FONT, tickangle=0, automargin=True, gridcolor="#e3e3e8")
    fig.update_yaxes(tickfont=TICKS, title_font=FONT, automargin=True, gridcolor="#e3e3e8")
    fig.update_annotations(font=FONT)  # subplot titles
    return fig


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's start-up correction (the first points are not pulled
    towards 0); NaNs are skipped. weight 0 = no smoothing."""
    out = np.empty_like(values, dtype=float)
    last, norm = 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            last, norm = weight * last + (1 - weight) * v, weight * norm + (1 - weight)
        out[i] = last / norm if norm else np.nan
    return out


def robust_range(values: np.ndarray, skip: float = 0.1, lo_q: float = 1.0, hi_q: float = 99.0) -> list[float] | None:
    """A y range that the first batches cannot flatten: the 1st to 99th percentile of the points after the
    first `skip` share, padded by 8 %. None when there are too few points to judge."""
    tail = values[int(len(values) * skip) :]
    tail = tail[np.isfinite(tail)]
    if len(tail) < 5:
        return None
    lo, hi = np.percentile(tail, [lo_q, hi_q])
    pad = (hi - lo) * 0.08 + 1e-6
    return [float(lo - pad), float(hi + pad)]


def batch_loss(rows: list[dict], smoothing: float = 0.9, recent: float = 1.0, max_points: int = 1500) -> go.Figure:
    """Negative ELBO of each logged batch, its exponential moving average (`smoothing`, as in TensorBoard) and
    a y range that ignores the first batches; `recent` < 1 shows only that last share of the steps."""
    if recent < 1.0 and rows:
        rows = rows[int(len(rows) * (1 - recent)) :]
    y_all = np.array([r.get("loss") if r.get("loss") is not None else np.nan for r in rows], dtype=float)
    smooth_all = ema(y_all, smoothing)  # on every point, before thinning, so thinning cannot change it
    step = max(1, len(rows) // max_points)
    keep = list(range(0, len(rows), step)) + ([len(rows) - 1] if rows and (len(rows) - 1) % step else [])
    x = np.array([rows[i].get("step") for i in keep], dtype=float)  # arrays: plotly keeps them as they are
    y, smooth = y_all[keep], smooth_all[keep]
    fig = go.Figure()
    fig.add_scatter(x=x, y=y, mode="lines", name="each batch", line=dict(color="#9ecae1", width=1))
    if smoothing > 0:
        fig.add_scatter(x=x, y=smooth, mode="lines", name=f"smoothed ({smoothing:g})", line=dict(color=TRAIN, width=3))
    fig.update_xaxes(title="training step (batch)")
    fig.update_yaxes(title="nats per image", range=robust_range(y_all))
    return _layout(fig, 300, "Batch loss (negative ELBO)")


def _epoch_ticks(fig: go.Figure, epochs: list) -> None:
    """Whole epochs, at most about 6 ticks, never rotated."""
    n = max([e for e in epochs if isinstance(e, (int, float))] or [1])
    dtick = next(d for d in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000, 10**9) if n / d <= 6)
    fig.update_xaxes(tickmode="linear", tick0=0 if dtick > 1 else 1, dtick=dtick, tickformat="d", tickangle=0)


def epoch_curves(rows: list[dict]) -> go.Figure:
    """Train and test negative ELBO per epoch, with its reconstruction and KL terms apart, and the lr (2 x 2)."""
    fig = make_subplots(
        rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.2,
        subplot_titles=("negative ELBO", "reconstruction", "KL", "learning rate"),
    )  # fmt: skip
    epochs = [r.get("epoch") for r in rows]
    for k, key in enumerate(("nelbo", "recon", "kl")):
        for split, color in (("train", TRAIN), ("test", TEST)):
            fig.add_scatter(
                x=epochs, y=[r.get(f"{split}_{key}") for r in rows], mode="lines+markers", name=split,
                line=dict(color=color, width=3), marker=dict(size=7), legendgroup=split, showlegend=k == 0,
                row=k // 2 + 1, col=k % 2 + 1,
            )  # fmt: skip
    if any(r.get("train_objective") is not None for r in rows):  # beta, warm-up or free bits: what was minimised
        fig.add_scatter(x=epochs, y=[r.get("train_objective") for r in rows], mode="lines", name="train objective",
                        line=dict(color=TRAIN, width=2, dash="dot"), row=1, col=1)  # fmt: skip
    # Linear, from 0: a cosine schedule ends near 0 and looks like it; a log axis made its last epoch
    # (1e-10 or so) look like a crash.
    fig.add_scatter(x=epochs, y=[r.get("lr") for r in rows], mode="lines+markers", name="lr",
                    line=dict(color="#444", width=2), showlegend=False, row=2, col=2)  # fmt: skip
    fig.update_yaxes(rangemode="tozero", exponentformat="e", row=2, col=2)
    _epoch_ticks(fig, epochs)
    fig.update_xaxes(title="epoch", row=2)
    fig.update_yaxes(title="nats", col=1)
    _layout(fig, 560, "Per epoch: train and test, in nats per image")
    fig.update_layout(margin=dict(t=80), legend=dict(y=1.06, x=1, yanchor="bottom", xanchor="right"))
    return fig


ACTIVE, INACTIVE = "#1f77b4", "#b8bcc8"


def kl_ledger(rows: list[dict]) -> go.Figure | None:
    """The ELBO's ledger: the last epoch's test KL of each latent dimension (active units dark), and every
    epoch's as a heat map, so a class sees which dimensions the model uses and when it began to use them.
    None when no epoch has a ledger."""
    from cvae.ledger import ACTIVE_VARIANCE, valid_dims

    kept = [(r.get("epoch"), dims, valid_dims(r.get("test_mu_variance"))) for r in rows
            if (dims := valid_dims(r.get("test_kl_dims"))) is not None]  # fmt: skip
    if not kept:
        return None
    epoch, last, variance = kept[-1]
    names = [f"z{j + 1}" for j in range(len(last))]
    active = [v > ACTIVE_VARIANCE for v in variance] if variance and len(variance) == len(last) else [True] * len(last)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.12,
                        subplot_titles=(f"epoch {epoch}: KL of each dimension", "every epoch"))  # fmt: skip
    fig.add_bar(x=names, y=last, marker_color=[ACTIVE if a else INACTIVE for a in active], showlegend=False,
                hovertemplate="%{x}: %{y:.2f} nats<extra></extra>", row=1, col=1)  # fmt: skip
    same = [(e, d) for e, d, _ in kept if len(d) == len(last)]
    fig.add_heatmap(x=[e for e, _ in same], y=names, z=np.array([d for _, d in same]).T, colorscale="Blues",
                    colorbar=dict(title=dict(text="nats", font=FONT), tickfont=TICKS, len=0.9),
                    hovertemplate="epoch %{x}, %{y}: %{z:.2f} nats<extra></extra>", row=1, col=2)  # fmt: skip
    fig.update_yaxes(title="nats", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title="epoch", row=1, col=2)
    _epoch_ticks(fig, [e for e, _ in same])
    fig.update_xaxes(tickmode=None, dtick=None, tick0=None, tickformat=None, type="category", row=1, col=1)
    return _layout(fig, 360 if len(last) <= 16 else 480)


RUN_COLORS = plotly.colors.qualitative.D3 + plotly.colors.qualitative.Dark2  # 18 colours, for runs


def run_colors(run_ids: list[str]) -> dict[str, str]:
    """A colour per run that stays the run's own on every page and visit: picked from its id's hash, the next
    free one when two of the chosen runs would share it (the first in sorted order keeps its own)."""
    taken: dict[str, str] = {}
    for run_id in sorted(run_ids):
        k = int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % len(RUN_COLORS)
        while RUN_COLORS[k] in taken.values() and len(taken) < len(RUN_COLORS):
            k = (k + 1) % len(RUN_COLORS)
        taken[run_id] = RUN_COLORS[k]
    return taken


def compare_curves(series: list[tuple[str, list[dict]]], key: str, title: str, legend: bool = True,
                   colors: list[str] | None = None) -> go.Figure:  # fmt: skip
    """One line per run: test `key` ("nelbo", "recon", "kl") per epoch; `series` is (legend name, metric rows),
    `colors` one per series (see `run_colors`)."""
    fig = go.Figure()
    colors = colors or [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(series))]
    for (name, rows), color in zip(series, colors, strict=True):
        fig.add_scatter(
            x=[r.get("epoch") for r in rows], y=[r.get(f"test_{key}") for r in rows], mode="lines+markers",
            name=name, line=dict(color=color, width=3), marker=dict(size=6),
        )  # fmt: skip
    _epoch_ticks(fig, [r.get("epoch") for _, rows in series for r in rows])
    ys = np.array([r.get(f"test_{key}") for _, rows in series for r in rows[1:]], dtype=float)
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="nats per image", range=robust_range(ys, skip=0.0, lo_q=0, hi_q=100))
    # Under the plot, one run a line (names can be long: "z=2 · lr=0.001 (my run)"), the figure as tall as the
    # legend needs, so no entry is cut off.
    rows = 28 * len(series) if legend else 0
    _layout(fig, 340 + rows, title)
    fig.update_layout(showlegend=legend, margin=dict(b=70 + rows),
                      legend=dict(orientation="v", yref="container", y=0, yanchor="bottom", x=0, xanchor="left"))  # fmt: skip
    return fig


def compare_ledgers(series: list[tuple[str, list[float]]], colors: list[str]) -> go.Figure:
    """The ledgers of several runs side by side: each run's last-epoch test KL of each latent dimension, a bar
    group per dimension; `series` is (legend name, KL per dimension in nats)."""
    fig = go.Figure()
    for (name, dims), color in zip(series, colors, strict=True):
        fig.add_bar(x=[f"z{j + 1}" for j in range(len(dims))], y=dims, name=name, marker_color=color,
                    hovertemplate="%{x}: %{y:.2f} nats<extra>" + name[:40] + "</extra>")  # fmt: skip
    fig.update_yaxes(title="nats per image", rangemode="tozero")
    fig.update_xaxes(type="category")
    _layout(fig, 320, "KL of each latent dimension, last epoch (a bar near 0: a dimension the model does not use)")
    fig.update_layout(showlegend=False, barmode="group")
    return fig


def class_colors(n: int) -> list[str]:
    """The classes' colours (cvae.figures.class_styles: colour-blind safe, each class its marker too)."""
    return [style.color for style in class_styles(n)]


def latent_animation(
    epochs: list[int], z: np.ndarray, labels: np.ndarray, class_names: list[str], height: int = 560
) -> tuple[go.Figure, str]:
    """Scatter of the latent means, one frame per epoch (play button and slider), fixed axes.

    At most MAX_FRAMES frames (evenly spaced epochs, the last included), and a
    frame holds only the points' new positions (colours, names and hover text
    stay those of the traces), so a long run's page stays light to send and draw.
    """
    keep = frame_epochs(len(epochs))
    epochs, z = [epochs[i] for i in keep], z[keep]
    xy, note, titles = plane(z, labels)  # (E, N, 2)
    xy = np.round(xy, 3)
    styles = class_styles(len(class_names))
    index = np.arange(len(labels))

    def traces(e: int) -> list[go.Scatter]:
        out = []
        for k, name in enumerate(class_names):
            m = labels == k
            out.append(go.Scatter(
                x=xy[e, m, 0], y=xy[e, m, 1], mode="markers", name=name, customdata=index[m],
                marker=dict(size=8, color=styles[k].color, symbol=styles[k].symbol, opacity=0.8, line=dict(width=0)),
                hovertemplate=f"class {name}<br>test image #%{{customdata}}<extra></extra>",
            ))  # fmt: skip
        return out

    def positions(e: int) -> list[dict]:
        return [dict(type="scatter", x=xy[e, labels == k, 0], y=xy[e, labels == k, 1]) for k in range(len(class_names))]

    last = len(epochs) - 1
    frames = [go.Frame(data=positions(i), name=str(e)) for i, e in enumerate(epochs)]
    fig = go.Figure(data=traces(last), frames=frames)
    xrange, yrange = extent(xy)
    fig.update_xaxes(range=list(xrange), title=titles[0], zeroline=True)
    fig.update_yaxes(range=list(yrange), title=titles[1])
    play = dict(frame=dict(duration=400, redraw=True), transition=dict(duration=0), fromcurrent=True, mode="immediate")
    pause = dict(frame=dict(duration=0, redraw=False), transition=dict(duration=0), mode="immediate")
    fig.update_layout(
        updatemenus=[
            dict(type="buttons", direction="left", x=0.12, y=0, xanchor="right", yanchor="top", pad=dict(r=10, t=70),
                 buttons=[dict(label="▶ Play", method="animate", args=[None, play]),
                          dict(label="Pause", method="animate", args=[[None], pause])])
        ],
        sliders=[
            dict(active=last, x=0.12, len=0.88, y=0, xanchor="left", yanchor="top", pad=dict(b=10, t=40),
                 currentvalue=dict(prefix="epoch ", font=dict(size=16)),
                 steps=[dict(label=str(e), method="animate", args=[[str(e)], pause]) for e in epochs])
        ],
        legend=dict(title=dict(text="class", font=FONT), font=FONT, itemsizing="constant", orientation="v", x=1.02,
                    y=1),
        height=height, margin=dict(l=10, r=10, t=40, b=10), font=FONT, clickmode="event+select",
        title=dict(text=note or "Posterior means of the test images", x=0, xanchor="left", font=dict(size=16)),
    )  # fmt: skip
    fig.update_xaxes(tickfont=TICKS, title_font=FONT, gridcolor="#e3e3e8")
    fig.update_yaxes(tickfont=TICKS, title_font=FONT, gridcolor="#e3e3e8")
    return fig, note


def epoch_of_point(fig: go.Figure, point: dict) -> int | None:
    """The epoch whose frame puts the clicked point where it was clicked: the selection reports the point's
    trace, index and position, and the animation frames hold every epoch's positions. None if no frame does."""
    trace, index = point.get("curve_number"), point.get("point_index", point.get("point_number"))
    x, y = point.get("x"), point.get("y")
    if trace is None or index is None or x is None or y is None or not fig.frames:
        return None
    best, best_d = None, float("inf")
    for frame in fig.frames:
        try:
            data = frame.data[trace]
            d = (float(data.x[index]) - float(x)) ** 2 + (float(data.y[index]) - float(y)) ** 2
        except (IndexError, TypeError, ValueError):
            continue
        if d < best_d:
            best, best_d = int(frame.name), d
    return best if best_d < 1e-6 else None


def latent_snapshot(
    z: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, *, legend: bool = False, height: int = 430
) -> go.Figure:
    """One epoch's latent means (N, Z) as a still scatter, coloured by class (PCA above 2-D): for side by side."""
    fig, note = latent_animation([0], z[None], labels, class_names, height)
    fig.frames = ()
    fig.layout.updatemenus, fig.layout.sliders = (), ()
    fig.update_layout(showlegend=legend, margin=dict(l=10, r=10, t=60, b=10),
                      title=dict(text=title + (f"<br><sup>{note}</sup>" if note else "")))  # fmt: skip
    return fig


ENCODER_Q, REFINED_Q = "#1f77b4", "#d95f02"  # the bounds chart: which q a bound uses (blue / orange, colour-blind safe)


def _pm(f: Figure) -> str:
    """A `cvae.bounds.Figure` as "mean ± standard error" in nats, two decimals."""
    return f"{f.nats:.2f}" + (f" ± {f.se:.2f}" if f.se is not None else "")


def bounds_ladder(b: Bounds, epoch: int) -> go.Figure:
    """The bounds of one run on -log p(x | y), loosest to tightest (a `cvae.bounds.Bounds`): each a dot with its
    standard-error bar, coloured by the q it uses, and the amortization and approximation gaps as brackets
    between the -ELBO with the encoder's q, the -ELBO with q refined per image and the tightest bound."""
    rungs = [("−ELBO<br>encoder's q", b.nelbo_encoder, ENCODER_Q, "diamond"),
             ("−ELBO<br>q refined", b.nelbo_refined, REFINED_Q, "diamond"),
             *[(f"IWAE<br>K = {k}", f, ENCODER_Q, "circle") for k, f in b.iwae],
             (f"IWAE K = {b.k}<br>refined q", b.iwae_refined, REFINED_Q, "circle")]  # fmt: skip
    fig = go.Figure()
    for name, color in (("encoder's q", ENCODER_Q), ("q refined per image", REFINED_Q)):
        kept = [(i, f, shape) for i, (_, f, c, shape) in enumerate(rungs) if c == color]
        fig.add_scatter(
            x=[i for i, _, _ in kept], y=[f.nats for _, f, _ in kept], name=name, mode="markers+text",
            marker=dict(size=16, color=color, symbol=[s for _, _, s in kept], line=dict(width=1, color="white")),
            error_y=dict(type="data", array=[f.se or 0.0 for _, f, _ in kept], color=color, thickness=1.5, width=6),
            text=[f"{f.nats:.2f}" for _, f, _ in kept], textposition="middle right", textfont=FONT,
            customdata=[_pm(f) for _, f, _ in kept], hovertemplate="%{customdata} nats<extra></extra>",
            cliponaxis=False,
        )  # fmt: skip
    tightest = len(rungs) - 1 if b.tightest == "refined" else len(rungs) - 2
    levels = [(0, b.nelbo_encoder.nats), (1, b.nelbo_refined.nats), (tightest, b.tightest_bound.nats)]
    edge = len(rungs) - 0.2  # the brackets stand right of the last bound
    for i, y in levels:  # dotted guides from each of the three bounds (past its figure) to the brackets
        fig.add_shape(type="line", x0=i + 0.65, x1=edge, y0=y, y1=y, line=dict(color="#8a8fa3", width=1.5, dash="dot"))
    tops = [f.nats + (f.se or 0) for _, f, _, _ in rungs]
    bottoms = [f.nats - (f.se or 0) for _, f, _, _ in rungs]
    span = max(max(tops) - min(bottoms), 1e-3)
    for (top, bottom), color in (((levels[0][1], levels[1][1]), ENCODER_Q), ((levels[1][1], levels[2][1]), REFINED_Q)):
        fig.add_shape(type="path", path=f"M {edge} {top} L {edge + 0.12} {top} L {edge + 0.12} {bottom} L {edge} "
                      f"{bottom}", line=dict(color=color, width=3))  # fmt: skip
    # The amortization gap's label beside its bracket; the approximation gap's hangs below its own (often a few
    # hundredths of a nat: a bracket too short to hold a label), so the two never overlap.
    fig.add_annotation(x=edge + 0.2, y=(levels[0][1] + levels[1][1]) / 2, xanchor="left", yanchor="middle",
                       text=f"<b>amortization gap</b><br>{_pm(b.amortization_gap)} nats", showarrow=False,
                       align="left")  # fmt: skip
    fig.add_annotation(x=edge + 0.2, y=min(levels[1][1], levels[2][1]), xanchor="left", yanchor="top",
                       text=f"<b>approximation gap</b><br>≥ {_pm(b.approximation_gap)} nats", showarrow=False,
                       align="left")  # fmt: skip
    unit = "nats per image" + (", hidden pixels" if b.scored == "hidden pixels" else " (a density)" if b.density
                               else "")  # fmt: skip
    fig.update_xaxes(tickvals=list(range(len(rungs))), ticktext=[r[0] for r in rungs], range=[-0.4, edge + 2.1],
                     showgrid=False, zeroline=False)  # fmt: skip
    fig.update_yaxes(title=f"{unit} (lower is tighter)",
                     range=[min(bottoms) - 0.22 * span, max(tops) + 0.08 * span])  # fmt: skip
    _layout(fig, 470, f"Bounds on −log p(x | y), loosest to tightest: epoch {epoch}, the first {b.test_images} "
                      "test images")  # fmt: skip
    fig.update_layout(legend=dict(y=1.0, yanchor="bottom"), margin=dict(t=80))
    return fig
