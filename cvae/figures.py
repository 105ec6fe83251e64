"""Slide-ready figures of a run folder, for a projector: the loss curves, the latent scatter at an epoch, the
reconstructions at an epoch, generated grids per class (PNG and SVG), and the latent animation (GIF).

    cvae export checkpoints/<run> --what curves              # PNG and SVG into <run>/generated/
    cvae export checkpoints/<run> --what latent --epoch 7 --format svg --out slides/
    cvae export checkpoints/<run> --what generate --label 3 --mode random --seed 1
    cvae export checkpoints/<run> --what animation           # the latent means over the epochs, a GIF

Every figure is 1280x720 px (16:9; the SVG has the same layout and keeps its text as text), with no text
under 16 px, and carries a caption: the run, the epoch, the training seed, the command that trained the run
(rebuilt from its config.json) and the `cvae export` command that draws this figure again. Drawn with
matplotlib alone (no browser), on Figure objects of its own (no pyplot), so the app can draw from any thread.

The classes are told apart by colour and by shape at once (`class_styles`): Paul Tol's colour-blind-safe
"muted" colours and a marker per class, declared here once for these figures and the app's plotly charts.
"""

from __future__ import annotations

import contextlib
import io
import math
import shlex
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cvae.config import RunConfig
from cvae.errors import CVAEError

# ------------------------------------------------------------------ the classes' colours and markers

# Paul Tol's "muted" scheme (personal.sron.nl/~pault), nine colours told apart under every common colour-vision
# deficiency, and black for a tenth. The marker shape tells the classes apart without any colour (grey print,
# a washed-out projector), so a class never depends on its colour alone.
CLASS_COLORS = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499",
                "#000000")  # fmt: skip
# One shape a class, as (plotly symbol, matplotlib marker): filled shapes, the most different ones first.
CLASS_MARKERS = (("circle", "o"), ("square", "s"), ("triangle-up", "^"), ("diamond", "D"), ("x", "X"),
                 ("triangle-down", "v"), ("star", "*"), ("cross", "P"), ("pentagon", "p"), ("hexagon", "h"))  # fmt: skip


class ClassStyle(NamedTuple):
    color: str  # "#RRGGBB"
    symbol: str  # plotly's marker symbol
    marker: str  # matplotlib's marker


def class_styles(n: int) -> list[ClassStyle]:
    """The look of classes 0..n-1: colour k mod 10, and the shape shifted by one every ten classes, so up to
    100 classes each get their own pair."""
    out = []
    for k in range(n):
        symbol, marker = CLASS_MARKERS[(k + k // len(CLASS_COLORS)) % len(CLASS_MARKERS)]
        out.append(ClassStyle(CLASS_COLORS[k % len(CLASS_COLORS)], symbol, marker))
    return out


# ------------------------------------------------------------------ latent codes in two dimensions

MAX_FRAMES = 50  # animation frames at most: a long run shows every k-th epoch (and its last)


def frame_epochs(n: int, max_frames: int = MAX_FRAMES) -> list[int]:
    """Indices of the epochs to animate: all of them, or `max_frames` spread evenly, first and last included."""
    if n <= max_frames:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_frames)})


def projection(last: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The map from codes (..., Z) to the plane (..., 2) that the latent plots draw, fitted on one epoch's
    means `last` (N, Z) (PCA above 2-D), and the axis titles' note."""
    dim = last.shape[-1]
    if dim == 2:
        return lambda z: z, ""
    if dim == 1:
        note = "z is 1-D: points are spread by class vertically"
        return lambda z: np.concatenate([z, np.zeros_like(z)], axis=-1), note
    mean = last.mean(axis=0)
    _, s, vt = np.linalg.svd(last - mean, full_matrices=False)
    share = (s[:2] ** 2).sum() / max((s**2).sum(), 1e-12)
    return lambda z: (z - mean) @ vt[:2].T, f"PCA of the {dim}-D means ({share:.0%} of the last epoch's variance)"


def project(z: np.ndarray) -> tuple[np.ndarray, str]:
    """(E, N, Z) -> (E, N, 2) and the axis titles' note; PCA fitted once on the last epoch."""
    to_plane, note = projection(z[-1])
    return to_plane(z), note


def plane(z: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, str, tuple[str, str]]:
    """(E, N, Z) latent means -> (E, N, 2) points to draw, the note on how, and the two axis titles: z itself,
    its principal axes above 2-D, or a 1-D code spread by class."""
    xy, note = project(z)
    xy = np.array(xy, dtype=np.float64)
    if z.shape[-1] == 1:
        xy[..., 1] = labels[None, :] + np.random.default_rng(0).uniform(-0.3, 0.3, size=labels.shape)[None, :]
        return xy, note, ("z₁", "class")
    axis = "PC" if note.startswith("PCA") else "z"
    return xy, note, (f"{axis}₁", f"{axis}₂")


def extent(xy: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis ranges holding the points of every frame but the farthest 0.2 %, padded by 5 %: fixed for a whole
    animation, so the points move and the axes do not."""
    lo, hi = np.nanpercentile(xy, 0.2, axis=(0, 1)), np.nanpercentile(xy, 99.8, axis=(0, 1))
    pad = (hi - lo) * 0.05 + 1e-3
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


# ------------------------------------------------------------------ the page: size, fonts, caption

WIDTH, HEIGHT = 1280, 720  # pixels, 16:9
DPI = 96  # so the SVG, sized in points (72 an inch), is 1280x720 CSS pixels in a browser too
FONT_PT = 12  # 16 px at 96 dpi: the smallest text on a slide
FORMATS = ("png", "svg", "gif")
MIME = {"png": "image/png", "svg": "image/svg+xml", "gif": "image/gif"}
INK, SOFT = "#1f2230", "#f0f1f5"
TRAIN, TEST = CLASS_COLORS[1], CLASS_COLORS[0]  # indigo and rose: apart in every colour vision, and in grey
STYLE = {
    "font.family": ["DejaVu Sans", "sans-serif"], "font.size": FONT_PT, "axes.titlesize": FONT_PT + 2,
    "axes.labelsize": FONT_PT, "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT,
    "legend.title_fontsize": FONT_PT, "figure.titlesize": FONT_PT + 4, "text.color": INK, "axes.labelcolor": INK,
    "axes.edgecolor": "#888a94", "xtick.color": INK, "ytick.color": INK, "axes.grid": True, "grid.color": "#dcdde3",
    # Text stays text (searchable, and a browser without DejaVu draws it in its own sans-serif or monospace font);
    # the ids inside stay the same from one drawing to the next.
    "svg.fonttype": "none", "svg.hashsalt": "cvae",
}  # fmt: skip
LINE_PX = 22  # a caption line: 16 px text and its spacing
CAPTION_CHARS = 126  # a caption line's characters at 16 px in a monospace font, inside 1280 px

# matplotlib's style settings are the process's: one figure is drawn at a time (the app draws on many threads).
_DRAWING = threading.Lock()


@contextlib.contextmanager
def _drawing() -> Iterator[Any]:
    import matplotlib

    with _DRAWING, matplotlib.rc_context(STYLE):
        from matplotlib.figure import Figure

        yield Figure


@dataclass(frozen=True)
class Caption:
    """What a slide says under its picture, so it can be traced and made again."""

    run: str  # the run's name and id
    epochs: str  # "epoch 7", "epochs 1–12"
    seed: int  # the training seed
    commands: tuple[str, ...]  # the commands that remake it, in order: training, then this figure
    about: str = ""  # what was trained: "MNIST · bernoulli · mlp · z=2"

    def lines(self, chars: int = CAPTION_CHARS) -> list[tuple[str, bool]]:
        """(text, is a command) per line, commands wrapped at spaces and indented on their next lines."""
        head = " · ".join(part for part in (f"run {self.run}", self.epochs, f"seed {self.seed}", self.about) if part)
        out = [(line, False) for line in textwrap.wrap(head, chars)]
        for command in self.commands:
            wrapped = textwrap.wrap(f"$ {command}", chars, subsequent_indent="    ", break_on_hyphens=False,
                                    break_long_words=True)  # fmt: skip
            out += [(line, True) for line in wrapped]
        return out


def _page(Figure: type, caption: Caption) -> tuple[Any, float]:
    """A 1280x720 figure with `caption` written along its bottom on a light band; returns it and the share of
    its height the band takes (the plots are laid out above it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)  # drawn to pixels without pyplot (the animation reads them frame by frame)
    lines = caption.lines()
    band = (len(lines) * LINE_PX + 18) / HEIGHT
    fig.patches.append(Rectangle((0, 0), 1, band, transform=fig.transFigure, facecolor=SOFT, edgecolor="none",
                                 zorder=-1))  # fmt: skip
    for i, (line, command) in enumerate(lines):
        y = band - (9 + (i + 0.5) * LINE_PX) / HEIGHT
        fig.text(16 / WIDTH, y, line, ha="left", va="center", fontsize=FONT_PT, color=INK,
                 family=["DejaVu Sans Mono", "monospace"] if command else ["DejaVu Sans", "sans-serif"],
                 weight="normal" if command else "bold")  # fmt: skip
    fig.get_layout_engine().set(rect=(0, band, 1, 1 - band), h_pad=8 / DPI, w_pad=12 / DPI)
    return fig, band


def _encode(fig: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    elif fmt == "png":
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    else:
        raise CVAEError(f"a still figure is PNG or SVG, not {fmt}")
    return buffer.getvalue()


# ------------------------------------------------------------------ the figures


def _values(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in rows], dtype=float)


def curves(metrics: Sequence[dict], caption: Caption, *, title: str | None = None, iwae: Sequence[dict] = (),
           formats: Sequence[str] = ("png", "svg")) -> dict[str, bytes]:  # fmt: skip
    """Per-epoch train and test −ELBO, reconstruction and KL in nats per image, side by side; `iwae` (rows of
    epoch, iwae_nll, iwae_nll_se, iw_samples, test_images) adds the importance-weighted bound to the −ELBO."""
    from matplotlib.ticker import MaxNLocator

    with _drawing() as Figure:
        fig, _ = _page(Figure, caption)
        axes = fig.subplots(1, 3)
        epochs = _values(metrics, "epoch")
        for ax, key, name in zip(axes, ("nelbo", "recon", "kl"), ("−ELBO", "reconstruction", "KL"), strict=True):
            ax.plot(epochs, _values(metrics, f"train_{key}"), color=TRAIN, ls="--", marker="o", lw=2.5, ms=7,
                    label="train (mean over the epoch)")  # fmt: skip
            ax.plot(epochs, _values(metrics, f"test_{key}"), color=TEST, ls="-", marker="s", lw=2.5, ms=7,
                    label="test (every test image)")  # fmt: skip
            ax.set_title(name)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        objective = _values(metrics, "train_objective")
        if np.isfinite(objective).any():  # beta, warm-up or free bits: what was minimised, beside the true bound
            axes[0].plot(epochs, objective, color=TRAIN, ls=":", lw=2, label="train objective (what was minimised)")
        if iwae:
            k, n = iwae[0].get("iw_samples"), iwae[0].get("test_images")
            axes[0].errorbar(_values(iwae, "epoch"), _values(iwae, "iwae_nll"), yerr=_values(iwae, "iwae_nll_se"),
                             color=CLASS_COLORS[3], marker="D", ms=7, lw=2, capsize=4,
                             label=f"test IWAE bound, K={k} ({n} images)")  # fmt: skip
        axes[0].set_ylabel("nats per image")
        axes[0].legend(loc="upper right", framealpha=0.9)  # the curves fall from the upper left
        fig.suptitle(title or "Per epoch: negative ELBO and its two terms, nats per image", fontweight="bold")
        return {fmt: _encode(fig, fmt) for fmt in formats}


def _scatter(ax: Any, xy: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> list[Any]:
    """One scatter a class (colour and marker of `class_styles`); returns them, to move their points."""
    out = []
    for k, (name, style) in enumerate(zip(class_names, class_styles(len(class_names)), strict=True)):
        mine = labels == k
        out.append(ax.scatter(xy[mine, 0], xy[mine, 1], s=34, c=style.color, marker=style.marker, alpha=0.8,
                              linewidths=0, label=str(name)))  # fmt: skip
    return out


def _latent_axes(fig: Any, names: tuple[str, str], ranges: tuple) -> Any:
    ax = fig.subplots()
    ax.set_xlim(*ranges[0])
    ax.set_ylim(*ranges[1])
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    return ax


def _latent_legend(fig: Any, scatters: list[Any]) -> None:
    # Outside the plot, one class a row, markers drawn bigger than the points (readable from a room's back).
    fig.legend(handles=scatters, loc="outside right upper", title="class", markerscale=1.8, frameon=False,
               ncols=1 if len(scatters) <= 12 else 2)  # fmt: skip


def latent(z: np.ndarray, labels: np.ndarray, class_names: Sequence[str], caption: Caption, *, title: str,
           formats: Sequence[str] = ("png", "svg")) -> dict[str, bytes]:  # fmt: skip
    """One epoch's latent means (N, Z) as a scatter, a colour and a marker per class (PCA above 2-D)."""
    xy, note, names = plane(z[None], labels)
    with _drawing() as Figure:
        fig, _ = _page(Figure, caption)
        ax = _latent_axes(fig, names, extent(xy))
        _latent_legend(fig, _scatter(ax, xy[0], labels, class_names))
        fig.suptitle(title + (f"\n{note}" if note else ""), fontweight="bold")
        return {fmt: _encode(fig, fmt) for fmt in formats}


def animation(epochs: Sequence[int], z: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              caption: Caption, *, title: str, fps: float = 2.5) -> bytes:  # fmt: skip
    """A GIF of the latent means (E, N, Z) moving over `epochs`, one frame an epoch (at most MAX_FRAMES, spread
    evenly, the last kept), on axes fixed for the whole animation; the last frame is held a little longer."""
    from PIL import Image

    keep = frame_epochs(len(epochs))
    epochs, z = [epochs[i] for i in keep], z[keep]
    xy, note, names = plane(z, labels)
    frames = []
    with _drawing() as Figure:
        fig, _ = _page(Figure, caption)
        ax = _latent_axes(fig, names, extent(xy))
        scatters = _scatter(ax, xy[-1], labels, class_names)
        _latent_legend(fig, scatters)
        heading = fig.suptitle(f"{title}: epoch {epochs[-1]}" + (f"\n{note}" if note else ""), fontweight="bold")
        # Laid out once, on the last frame, then frozen: the axes must not move between frames.
        fig.canvas.draw()
        fig.set_layout_engine("none")
        for i, epoch in enumerate(epochs):
            for k, points in enumerate(scatters):
                points.set_offsets(xy[i, labels == k])
            heading.set_text(f"{title}: epoch {epoch}" + (f"\n{note}" if note else ""))
            fig.canvas.draw()
            frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
    # One palette for every frame (the last frame holds every colour drawn), no dithering: flat colours stay flat.
    palette = frames[-1].quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    frames = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    durations = [round(1000 / fps)] * len(frames)
    durations[-1] *= 3
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return buffer.getvalue()


def grids(panels: Sequence[tuple[str, np.ndarray]], caption: Caption, *, title: str,
          formats: Sequence[str] = ("png", "svg")) -> dict[str, bytes]:  # fmt: skip
    """Image grids (each H x W x 3 uint8 pixels, titled) side by side, up to 5 a row, pixels kept sharp."""
    from PIL import Image

    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    with _drawing() as Figure:
        fig, band = _page(Figure, caption)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        target = min(WIDTH / cols, HEIGHT * (1 - band) / rows)  # about the panel's size on the page, in px
        for ax, (name, pixels) in zip(axes, panels, strict=False):
            # Enlarged here with sharp pixels (the SVG keeps the picture as it is given, and a browser would
            # smooth a small one); never much beyond the panel's size on the page.
            k = max(1, math.ceil(target / max(pixels.shape[:2])))
            big = np.asarray(Image.fromarray(pixels).resize((pixels.shape[1] * k, pixels.shape[0] * k),
                                                              Image.Resampling.NEAREST))  # fmt: skip
            ax.imshow(big, interpolation="none")
            ax.set_title(name)
        for ax in axes:
            ax.set_axis_off()
        fig.suptitle(title, fontweight="bold")
        return {fmt: _encode(fig, fmt) for fmt in formats}


# ------------------------------------------------------------------ a run folder's figures


@dataclass(frozen=True)
class Export:
    """One figure of a run: what, at which epoch (None: the newest), and the options of its kind."""

    what: str  # one of WHATS
    epoch: int | None = None
    kind: str = "mean"  # recon: the decoder's mean image, or a sample
    mode: str = "uniform"  # generate: a grid over z1, z2 in [-span, span], or random codes z ~ N(0, I)
    label: int | None = None  # generate: one class (a big grid), or every class (None)
    n: int | None = None  # generate: n x n images a class [20 for one class, 8 for every class]
    span: float = 2.0  # generate, uniform
    seed: int = 0  # generate, random: the codes' seed (the same codes under every class)

    def side(self) -> int:
        return self.n or (20 if self.label is not None else 8)

    def formats(self) -> tuple[str, ...]:
        """The formats this figure comes in: a GIF for the animation, PNG and SVG for the others."""
        return ("gif",) if self.what == "animation" else ("png", "svg")

    def command(self, where: str) -> str:
        """`cvae export ...` that draws this figure again (the epoch always given, so more training does not
        change what it draws)."""
        parts = ["cvae export", shlex.quote(where), "--what", self.what]
        if self.epoch is not None:
            parts += ["--epoch", str(self.epoch)]
        if self.what == "recon" and self.kind != "mean":
            parts += ["--kind", self.kind]
        if self.what == "generate":
            parts += ["--mode", self.mode] if self.mode != "uniform" else []
            parts += ["--label", str(self.label)] if self.label is not None else []
            parts += ["--n", str(self.n)] if self.n is not None else []
            parts += ["--span", f"{self.span:g}"] if self.mode == "uniform" and self.span != 2.0 else []
            parts += ["--seed", str(self.seed)] if self.mode == "random" and self.seed else []
        return " ".join(parts)

    def filename(self, run_id: str, fmt: str) -> str:
        """<run>_<what>[_details]_e<epoch>.<fmt>"""
        detail = {"recon": f"_{self.kind}", "generate": f"_{self.mode}" + (
            f"_class{self.label}" if self.label is not None else "")}.get(self.what, "")  # fmt: skip
        return f"{run_id}_{self.what}{detail}_e{self.epoch}.{fmt}"


WHATS = ("curves", "latent", "recon", "generate", "animation")


def _epochs_text(epochs: Sequence[int]) -> str:
    if not epochs:
        return "none"
    if list(epochs) == list(range(epochs[0], epochs[-1] + 1)) and len(epochs) > 2:
        return f"{epochs[0]} to {epochs[-1]}"
    return ", ".join(map(str, epochs))


@dataclass(frozen=True)
class Source:
    """A run folder as the figures read it: its config, metrics and name."""

    path: Path
    raw: dict  # config.json
    config: RunConfig
    metrics: list[dict]
    name: str  # its display name ("" when unnamed)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def class_names(self) -> list[str]:
        names = (self.raw.get("dataset_info") or {}).get("class_names") or []
        return [str(c) for c in names] or [str(k) for k in range(self.config.model.num_classes)]

    def about(self) -> str:
        m = self.config.model
        data = (self.raw.get("dataset_info") or {}).get("name") or self.config.data.dataset
        kind = {"none": " · plain VAE", "quadrants": " · digit completion"}.get(m.condition, "")
        sigma = " (learned σ)" if m.learn_sigma else ""
        return f"{data} · {m.likelihood}{sigma} · {m.arch} · z={m.latent_dim}{kind}"

    def caption(self, epochs: str, commands: Sequence[str]) -> Caption:
        run = f"“{self.name}” ({self.id})" if self.name else self.id
        return Caption(run, epochs, self.config.train.seed, tuple(commands), self.about())


def open_run(path: Path | str) -> Source:
    """A run folder's config, metrics and name; CVAEError (one line) for a folder that is not a run."""
    from cvae.names import read_meta
    from cvae.runs import RunDir

    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise CVAEError(f"no run folder at {path}")
    raw = run.read_config()
    if raw is None:
        raise CVAEError(f"{path} is not a run folder with a readable config.json (a run writes it when it starts)")
    try:
        config = RunConfig.from_dict({k: raw.get(k, {}) for k in ("data", "model", "train")})
    except CVAEError as err:
        raise CVAEError(f"{path}/config.json: {err}") from None
    return Source(run.path, raw, config, run.read_metrics(), read_meta(run.path)["name"])


def train_commands(raw: dict, where: str) -> list[str]:
    """The commands that trained a run, from its config.json: `cvae train` with the options that differ from
    the defaults (or from the quick demo's preset) and --run-dir `where`, then one `cvae train --resume_path`
    a resume, with the epochs each trained (its config.json records when each began, not what it overrode)."""
    from cvae.cli import format_argv
    from cvae.config import COMPLETION, DEFAULTS, OPTIONS, QUICK_DEMO

    config = RunConfig.from_dict({k: raw.get(k, {}) for k in ("data", "model", "train")})
    values = {o.name: getattr(getattr(config, o.section), o.field) for o in OPTIONS if o.section != "launch"}
    if values["binarize"] == ("static" if values["decoder_type"] == "bernoulli" else "none"):
        values["binarize"] = DEFAULTS["binarize"]  # what "auto" resolves to for this decoder
    history = [h for h in raw.get("history") or [] if isinstance(h, dict)]
    starts = [int(h.get("start_epoch") or 0) for h in history if isinstance(h.get("start_epoch"), int)]
    starts = starts if starts and starts[0] == 0 else [0]
    # Each resume trains --epochs more; the config holds the last one's, the history when each began.
    spans = [b - a for a, b in zip(starts, starts[1:], strict=False)] + [values["epochs"]]
    values["epochs"] = spans[0]

    def differing(preset: dict) -> dict:
        base = {**DEFAULTS, **preset}
        if values["condition"] == "quadrants":  # the completion preset applies by itself, as in training
            base.update(COMPLETION, mask_channel=values["quadrants"] == 0)
        return {k: v for k, v in values.items() if v != base[k]}

    # The quick demo's preset, where it says the run in fewer flags (`--quick-demo --latent_dim 10`).
    plain, demo = differing({}), differing(QUICK_DEMO)
    first = format_argv({"quick_demo": True, **demo} if len(demo) + 1 < len(plain) else plain) + ["--run-dir", where]
    resumes = [format_argv({"resume_path": where, "epochs": more}) for more in spans[1:]]
    return ["cvae train " + " ".join(shlex.quote(a) for a in argv) for argv in [first, *resumes]]


def _check_epoch(epoch: int | None, have: Sequence[int], what: str) -> int:
    if not have:
        raise CVAEError(f"this run has no {what} yet (they are saved when an epoch ends)")
    if epoch is None:
        return have[-1]
    if epoch not in have:
        raise CVAEError(f"epoch {epoch}: this run has {what} for epochs {_epochs_text(have)}")
    return epoch


def resolve(source: Source, request: Export) -> Export:
    """The request with its epoch settled (the newest where none was asked) and its options checked; raises a
    one-line CVAEError for an epoch the run does not have or an option out of range."""
    from cvae.artifacts import DECODER_FILE
    from cvae.runs import RunDir

    run = RunDir(source.path)
    if request.what not in WHATS:
        raise CVAEError(f"--what must be one of {', '.join(WHATS)}, got {request.what!r}")
    if request.what == "curves":
        have = sorted({int(r["epoch"]) for r in source.metrics if isinstance(r.get("epoch"), int)})
        return replace(request, epoch=_check_epoch(request.epoch, have, "per-epoch metrics"))
    if request.what in ("latent", "animation"):
        return replace(request, epoch=_check_epoch(request.epoch, run.epochs_with("latent.npy"), "latent codes"))
    if request.what == "recon":
        if request.kind not in ("mean", "sample"):
            raise CVAEError(f"--kind must be mean or sample, got {request.kind!r}")
        have = run.epochs_with(f"recon_{request.kind}.png")
        return replace(request, epoch=_check_epoch(request.epoch, have, "reconstructions"))
    if source.config.model.condition != "label":
        raise CVAEError("generate draws images of a class: this run's model is not given a class label")
    if request.mode not in ("uniform", "random"):
        raise CVAEError(f"--mode must be uniform or random, got {request.mode!r}")
    k = source.config.model.num_classes
    if request.label is not None and not 0 <= request.label < k:
        raise CVAEError(f"--label must be a class from 0 to {k - 1}, got {request.label}")
    if not 1 <= request.side() <= 40 or not 0 < request.span <= 100:
        raise CVAEError("--n must be 1 to 40 and --span in (0, 100]")
    # Every epoch keeps its decoder, which is all a generated image needs.
    have = sorted(set(run.epochs_with(DECODER_FILE)) | set(_checkpoint_epochs(run)))
    return replace(request, epoch=_check_epoch(request.epoch, have, "decoder weights"))


def _checkpoint_epochs(run: Any) -> list[int]:
    found = []
    for path in run.checkpoints.glob("epoch_*.pt"):
        with contextlib.suppress(ValueError):
            found.append(int(path.stem[6:]))
    return found


def inputs(path: Path | str, request: Export) -> list[Path]:
    """The files a figure is drawn from: a cache of it is good while none of them changes."""
    from cvae.artifacts import decoder_source
    from cvae.names import META_FILE
    from cvae.runs import RunDir

    run = RunDir(Path(path))
    files = [run.config_path, run.path / META_FILE, run.metrics_path]
    if request.what in ("latent", "animation"):
        files += [run.artifacts / "latent_labels.npy"] + [run.artifact(e, "latent.npy") for e in
                                                         run.epochs_with("latent.npy")]  # fmt: skip
    elif request.what == "recon":
        files += [run.artifacts / "truth.png", run.artifact(request.epoch or 0, f"recon_{request.kind}.png")]
    elif request.what == "generate":
        where = decoder_source(run, request.epoch or 0)
        files += [where.checkpoint] + ([where.decoder] if where.decoder is not None else [])
    return files


def _model_at(source: Source, epoch: int) -> Any:
    """The model whose decoder is the one of `epoch` (`cvae.artifacts.decoder_source` says where from)."""
    from cvae.artifacts import decoder_source, load_decoder
    from cvae.generate import load_run
    from cvae.runs import RunDir

    where = decoder_source(RunDir(source.path), epoch)
    loaded = load_run(where.checkpoint)
    if where.decoder is not None:
        loaded.model.decoder.load_state_dict(load_decoder(where.decoder, loaded.model))
    return loaded.model


def generation_panels(model: Any, class_names: Sequence[str], *, mode: str = "uniform", n: int = 8,
                      labels: Sequence[int] | None = None, span: float = 2.0,
                      seed: int = 0) -> list[tuple[str, np.ndarray]]:  # fmt: skip
    """(class name, n x n grid pixels) for each class of `labels` (all by default): a uniform grid of codes over
    z1, z2 in [-span, span], or n*n random codes of `seed`, the same codes under every class."""
    from cvae.artifacts import grid_pixels
    from cvae.generate import random_images, uniform_images

    out = []
    for k in range(len(class_names)) if labels is None else labels:
        images = uniform_images(model, k, n, span) if mode == "uniform" else random_images(model, k, n * n, seed)
        out.append((f"class {class_names[k]}", grid_pixels(images, nrow=n, padding=1)))
    return out


def recon_panels(path: Path | str, epochs: Sequence[int], kind: str = "mean") -> list[tuple[str, np.ndarray]]:
    """The fixed test batch and its reconstructions after each of `epochs`, as (title, pixels)."""
    from PIL import Image

    from cvae.runs import RunDir

    run = RunDir(Path(path))
    out = []
    for title, file in [("test images", run.artifacts / "truth.png")] + [
        (f"epoch {e}" + (" (sampled)" if kind == "sample" else ""), run.artifact(e, f"recon_{kind}.png"))
        for e in epochs
    ]:
        try:
            with Image.open(file) as picture:
                out.append((title, np.asarray(picture.convert("RGB"))))
        except (OSError, ValueError):
            raise CVAEError(f"{file.name} of this run cannot be read (missing, or still being written?)") from None
    return out


def _latents(source: Source, upto: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    from cvae.runs import RunDir

    run = RunDir(source.path)
    try:
        labels = np.load(run.artifacts / "latent_labels.npy", allow_pickle=False)
        epochs = [e for e in run.epochs_with("latent.npy") if e <= upto]
        z = np.stack([np.load(run.artifact(e, "latent.npy"), allow_pickle=False) for e in epochs]).astype(np.float32)
    except (OSError, ValueError) as err:
        raise CVAEError(f"the latent codes of this run cannot be read: {str(err)[:120]}") from None
    if z.ndim != 3 or z.shape[1] != len(labels) or not len(labels):
        raise CVAEError("the latent codes of this run do not match its labels (a latent subset of 0?)")
    return epochs, z, labels.astype(np.int64)


def export(path: Path | str, request: Export, formats: Sequence[str] | None = None,
           where: str | None = None) -> dict[str, bytes]:  # fmt: skip
    """A run's figure as {format: bytes}; `where`: the run folder as the caption's commands name it (default:
    `path` as given). Raises a one-line CVAEError for a folder, epoch or option the run does not have."""
    source = open_run(path)
    request = resolve(source, request)
    formats = tuple(formats or request.formats())
    bad = [f for f in formats if f not in request.formats()]
    if bad:
        raise CVAEError(f"--what {request.what} comes as {' or '.join(request.formats())}, not {bad[0]}")
    where = str(path) if where is None else where
    e = request.epoch
    figure = request.command(where)
    trained = train_commands(source.raw, where)
    if request.what == "curves":
        rows = [r for r in source.metrics if isinstance(r.get("epoch"), int) and r["epoch"] <= e]
        cap = source.caption(f"epochs 1–{e}", [*trained, figure])
        return curves(rows, cap, formats=formats)
    if request.what in ("latent", "animation"):
        epochs, z, labels = _latents(source, e)
        names = source.class_names
        if int(labels.max()) >= len(names):
            raise CVAEError("the latent labels name more classes than this run has")
        what = f"Posterior means of {len(labels):,} test images"
        if request.what == "animation":
            cap = source.caption(f"epochs {epochs[0]}–{e}", [*trained, figure])
            return {"gif": animation(epochs, z, labels, names, cap, title=what)}
        cap = source.caption(f"epoch {e}", [*trained, figure])
        return latent(z[-1], labels, names, cap, title=f"{what} after epoch {e}", formats=formats)
    if request.what == "recon":
        panels = recon_panels(source.path, [e], request.kind)
        how = "mean images (z = the posterior mean)" if request.kind == "mean" else "samples (z ~ q, then x ~ p)"
        cap = source.caption(f"epoch {e}", [*trained, figure])
        return grids(panels, cap, title=f"The fixed test batch and its reconstructions after epoch {e}: {how}",
                     formats=formats)  # fmt: skip
    model = _model_at(source, e)
    n = request.side()
    labels = None if request.label is None else [request.label]
    panels = generation_panels(model, source.class_names, mode=request.mode, n=n, labels=labels, span=request.span,
                               seed=request.seed)  # fmt: skip
    how = (f"{n}×{n} codes on a grid over z₁ (→), z₂ (↑) in [−{request.span:g}, {request.span:g}]"
           if request.mode == "uniform" else f"{n * n} random codes z ~ N(0, I), seed {request.seed}")  # fmt: skip
    whom = f"class {source.class_names[request.label]}" if request.label is not None else "every class, the same codes"
    cap = source.caption(f"epoch {e}", [*trained, figure])
    return grids(panels, cap, title=f"Generated after epoch {e}, {whom}: {how}", formats=formats)


# ------------------------------------------------------------------ command line


def cli(argv: Sequence[str] | None = None) -> int:
    from cvae.cli import OneLineParser, number, run_main
    from cvae.runs import write_atomic

    p = OneLineParser(prog="cvae export", description="Slide-ready figures of a run: 1280x720 PNG and SVG with a "
                      "caption (run, epoch, seed, the commands that remake it), the latent animation as a GIF.")  # fmt: skip
    p.add_argument("run", help="a run folder")
    p.add_argument("--what", required=True, choices=WHATS, help="which figure")
    p.add_argument("--epoch", type=number(int, low=1, low_open=False), default=None,
                   help="the epoch shown (curves, animation: the last one shown) [the newest]")  # fmt: skip
    p.add_argument("--format", default=None, help="comma-separated png,svg (or gif for the animation) [all of its]")
    p.add_argument("--out", default=None, help="output folder [<run>/generated]")
    p.add_argument("--kind", default="mean", choices=("mean", "sample"), help="recon: mean images or samples [mean]")
    p.add_argument("--mode", default="uniform", choices=("uniform", "random"),
                   help="generate: a grid of codes over z1, z2, or random codes [uniform]")  # fmt: skip
    p.add_argument("--label", type=number(int, low=0, low_open=False), default=None,
                   help="generate: one class, as a big grid [every class]")  # fmt: skip
    p.add_argument("--n", type=number(int, low=1, low_open=False), default=None,
                   help="generate: n x n images a class [20 for one class, 8 for every class]")  # fmt: skip
    p.add_argument("--span", type=number(float), default=2.0, help="generate, uniform: codes in [-span, span] [2]")
    p.add_argument("--seed", type=number(int, low=0, low_open=False), default=0, help="generate, random: seed [0]")
    args = p.parse_args(argv)

    def body() -> int:
        formats = [f.strip().lower() for f in args.format.split(",") if f.strip()] if args.format else None
        if formats is not None and (not formats or any(f not in FORMATS for f in formats)):
            raise CVAEError(f"--format must be comma-separated {', '.join(FORMATS)}, got {args.format!r}")
        request = Export(args.what, args.epoch, kind=args.kind, mode=args.mode, label=args.label, n=args.n,
                         span=args.span, seed=args.seed)  # fmt: skip
        source = open_run(args.run)
        request = resolve(source, request)
        made = export(args.run, request, formats)
        out = Path(args.out) if args.out else source.path / "generated"
        for fmt, data in made.items():
            path = out / request.filename(source.id, fmt)
            write_atomic(path, data)
            print(path)
        return 0

    return run_main(body)


if __name__ == "__main__":
    from cvae.cli import exit_with

    exit_with(cli())
