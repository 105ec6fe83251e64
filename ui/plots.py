"""Plotly figures: training curves and the animated latent space."""

from __future__ import annotations

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

TRAIN, TEST = "#1f77b4", "#d62728"
FONT = dict(size=15)


def _layout(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=50 if title else 30, b=10), font=FONT,
        title=dict(text=title, x=0, xanchor="left") if title else None,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
    )  # fmt: skip
    return fig


def batch_loss(rows: list[dict], max_points: int = 1500) -> go.Figure:
    """Negative ELBO of each logged batch (thinned to at most `max_points`), with a moving average."""
    step = max(1, len(rows) // max_points)
    rows = rows[::step] + ([rows[-1]] if rows and len(rows) % step != 1 else [])
    x = [r.get("step") for r in rows]
    y = np.array([r.get("loss") if r.get("loss") is not None else np.nan for r in rows], dtype=float)
    k = max(1, min(50, len(y) // 10))
    smooth = np.convolve(np.nan_to_num(y, nan=np.nanmean(y) if len(y) else 0), np.ones(k) / k, mode="valid")
    fig = go.Figure()
    fig.add_scatter(x=x, y=y, mode="lines", name="batch", line=dict(color="#9ecae1", width=1))
    fig.add_scatter(x=x[k - 1 :], y=smooth, mode="lines", name=f"moving mean ({k})", line=dict(color=TRAIN, width=3))
    fig.update_xaxes(title="training step (batch)")
    fig.update_yaxes(title="nats per image")
    return _layout(fig, 360, "Batch loss (negative ELBO)")


def epoch_curves(rows: list[dict]) -> go.Figure:
    """Train and test negative ELBO per epoch, with its reconstruction and KL terms apart, and the lr."""
    fig = make_subplots(
        rows=1, cols=4, horizontal_spacing=0.07,
        subplot_titles=("negative ELBO", "reconstruction", "KL", "learning rate"),
    )  # fmt: skip
    epochs = [r.get("epoch") for r in rows]
    for col, key in enumerate(("nelbo", "recon", "kl"), start=1):
        for split, color in (("train", TRAIN), ("test", TEST)):
            fig.add_scatter(
                x=epochs, y=[r.get(f"{split}_{key}") for r in rows], mode="lines+markers", name=split,
                line=dict(color=color, width=3), marker=dict(size=7), legendgroup=split, showlegend=col == 1,
                row=1, col=col,
            )  # fmt: skip
    fig.add_scatter(x=epochs, y=[r.get("lr") for r in rows], mode="lines+markers", name="lr",
                    line=dict(color="#555", width=2, shape="hv"), showlegend=False, row=1, col=4)  # fmt: skip
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=4)
    fig.update_xaxes(title="epoch", dtick=max(1, len(rows) // 8) if rows else 1)
    fig.update_yaxes(title="nats per image", row=1, col=1)
    _layout(fig, 370, "Per epoch: train and test, in nats per image")
    fig.update_layout(margin=dict(t=95), legend=dict(y=1.16, x=1, yanchor="bottom", xanchor="right"))
    return fig


def class_colors(n: int) -> list[str]:
    palette = plotly.colors.qualitative.D3 if n <= 10 else plotly.colors.qualitative.Alphabet
    return [palette[i % len(palette)] for i in range(n)]


def project(z: np.ndarray) -> tuple[np.ndarray, str]:
    """(E, N, Z) -> (E, N, 2) and the axis titles' note; PCA fitted once on the last epoch."""
    dim = z.shape[-1]
    if dim == 2:
        return z, ""
    if dim == 1:
        return np.concatenate([z, np.zeros_like(z)], axis=-1), "z is 1-D: points are spread by class vertically"
    last = z[-1] - z[-1].mean(axis=0)
    _, s, vt = np.linalg.svd(last, full_matrices=False)
    share = (s[:2] ** 2).sum() / max((s**2).sum(), 1e-12)
    centred = z - z[-1].mean(axis=0)
    return centred @ vt[
        :2
    ].T, f"PCA of the {dim}-D latent means, fitted on the last epoch ({share:.0%} of its variance)"


MAX_FRAMES = 50  # animation frames at most: a long run shows every k-th epoch (and its last)


def frame_epochs(n: int, max_frames: int = MAX_FRAMES) -> list[int]:
    """Indices of the epochs to animate: all of them, or `max_frames` spread evenly, first and last included."""
    if n <= max_frames:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_frames)})


def latent_animation(
    epochs: list[int], z: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> tuple[go.Figure, str]:
    """Scatter of the latent means, one frame per epoch (play button and slider), fixed axes.

    At most MAX_FRAMES frames (evenly spaced epochs, the last included), and a
    frame holds only the points' new positions (colours, names and hover text
    stay those of the traces), so a long run's page stays light to send and draw.
    """
    keep = frame_epochs(len(epochs))
    epochs, z = [epochs[i] for i in keep], z[keep]
    xy, note = project(z)  # (E, N, 2)
    if z.shape[-1] == 1:
        xy[..., 1] = labels[None, :] + np.random.default_rng(0).uniform(-0.3, 0.3, size=labels.shape)[None, :]
    xy = np.round(xy.astype(np.float64), 3)
    colors = class_colors(len(class_names))
    index = np.arange(len(labels))

    def traces(e: int) -> list[go.Scatter]:
        out = []
        for k, name in enumerate(class_names):
            m = labels == k
            out.append(go.Scatter(
                x=xy[e, m, 0], y=xy[e, m, 1], mode="markers", name=name, customdata=index[m],
                marker=dict(size=7, color=colors[k], opacity=0.75, line=dict(width=0)),
                hovertemplate=f"class {name}<br>test image #%{{customdata}}<extra></extra>",
            ))  # fmt: skip
        return out

    def positions(e: int) -> list[dict]:
        return [dict(type="scatter", x=xy[e, labels == k, 0], y=xy[e, labels == k, 1]) for k in range(len(class_names))]

    last = len(epochs) - 1
    frames = [go.Frame(data=positions(i), name=str(e)) for i, e in enumerate(epochs)]
    fig = go.Figure(data=traces(last), frames=frames)
    lo, hi = np.nanpercentile(xy, 0.2, axis=(0, 1)), np.nanpercentile(xy, 99.8, axis=(0, 1))
    pad = (hi - lo) * 0.05 + 1e-3
    axis = "PC" if note.startswith("PCA") else "z"
    fig.update_xaxes(range=[lo[0] - pad[0], hi[0] + pad[0]], title=f"{axis}₁", zeroline=True)
    fig.update_yaxes(range=[lo[1] - pad[1], hi[1] + pad[1]], title=f"{axis}₂" if z.shape[-1] > 1 else "class")
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
        legend=dict(title="class", itemsizing="constant", orientation="v", x=1.02, y=1),
        height=680, margin=dict(l=10, r=10, t=60, b=10), font=FONT, clickmode="event+select",
        title=dict(text=note or "Posterior means of the test images", x=0, xanchor="left", font=dict(size=16)),
    )  # fmt: skip
    return fig, note
