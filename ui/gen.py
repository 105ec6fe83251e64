"""Generation for the Generate page: cached per-class grids, sliders decoded ahead, restyle, interpolation."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from cvae.figures import Export
from cvae.generate import interpolate, random_images, restyle, uniform_images
from ui import scrub, slides
from ui.models import cached_model, scale_for, upscale
from ui.runs import Run

STEPS = 21  # slider positions decoded ahead, per axis


@st.cache_data(max_entries=64, show_spinner="Decoding…")
def grid_png(checkpoint: str, version: tuple[int, int], mode: str, label: int, n: int, span: float, seed: int) -> bytes:
    """A PNG of n×n images of class `label`: uniform latent grid or random codes."""
    net, _ = cached_model(checkpoint, version)
    with torch.no_grad():
        images = uniform_images(net, label, n, span) if mode == "uniform" else random_images(net, label, n * n, seed)
    return upscale(images, n, max(1, scale_for(net.config.height) - 1), padding=1)


@torch.no_grad()
def decode_png(net, z: list[float], label: int) -> bytes:
    """One image for one code under one class, enlarged."""
    images = net.generate(torch.tensor([z], dtype=torch.float32), torch.tensor([label]))
    return upscale(images, 1, max(4, 2 * scale_for(net.config.height) * 2))


@st.cache_data(max_entries=64, show_spinner=False)
def restyle_png(checkpoint: str, version: tuple[int, int], _net, x: np.ndarray, label: int) -> bytes:
    """The image's code decoded under every class, in one row (cached per model, image and class)."""
    with torch.no_grad():
        images = restyle(_net, torch.from_numpy(x), int(label))
    return upscale(images, len(images), 2 * scale_for(_net.config.height))


@st.cache_data(max_entries=64, show_spinner=False)
def interpolate_png(checkpoint: str, version: tuple[int, int], _net, ia: int, ib: int, _x: np.ndarray,
                    _y: np.ndarray, steps: int) -> bytes:  # fmt: skip
    """The blend from test image ia to ib in one row (cached per model and pair, like blend_sprite)."""
    with torch.no_grad():
        images = interpolate(_net, _x[ia], int(_y[ia]), _x[ib], int(_y[ib]), steps)
    return upscale(images, steps, 2 * scale_for(_net.config.height))


@st.cache_data(max_entries=256, show_spinner=False)
def thumbnail_png(image: np.ndarray, scale: int) -> bytes:
    """One (C, H, W) image enlarged, cached by its pixels: the same thumbnails are drawn on every rerun."""
    return upscale(image[None], 1, scale)


@st.cache_data(max_entries=32, show_spinner="Decoding every slider position…")
def plane_sprite(checkpoint: str, version: tuple[int, int], label: int, dims: tuple[int, int], span: float) -> bytes:
    """The decodes of a STEPS x STEPS grid of codes over z[dims[0]] (columns) and z[dims[1]] (rows), the other
    dimensions 0, under class `label`, as one sprite sheet (row 0 = the lowest value)."""
    net, _ = cached_model(checkpoint, version)
    values = torch.linspace(-span, span, STEPS)
    z = torch.zeros(STEPS * STEPS, net.config.latent_dim)
    rows, cols = torch.meshgrid(values, values, indexing="ij")  # (S, S) each
    z[:, dims[0]] = cols.reshape(-1)
    if dims[1] != dims[0]:
        z[:, dims[1]] = rows.reshape(-1)
    with torch.no_grad():
        images = net.generate(z, torch.full((len(z),), label))
    return scrub.sprite(images, STEPS)


@st.cache_data(max_entries=32, show_spinner="Decoding the interpolation…")
def blend_sprite(checkpoint: str, version: tuple[int, int], ia: int, ib: int, _x: np.ndarray, _y: np.ndarray) -> bytes:
    """STEPS blends from test image ia to ib (code and label), one sprite row; keyed by the images' indices
    (the test images are the run's, fixed by the checkpoint's run)."""
    net, _ = cached_model(checkpoint, version)
    with torch.no_grad():
        images = interpolate(net, _x[ia], int(_y[ia]), _x[ib], int(_y[ib]), STEPS)
    return scrub.sprite(images, STEPS)


def grids(checkpoint: str, version: tuple[int, int], label: int, name: str, stem: str,
          slides_of: tuple[Run, int] | None = None) -> None:  # fmt: skip
    """The uniform latent grid and the random samples of one class, side by side, with downloads (and, for
    `slides_of` (run, epoch of the model), the same grids drawn for slides)."""
    c1, c2 = st.columns(2)
    images = c1.container(), c2.container()  # the grids first, their settings under them
    span = c1.slider("Uniform grid covers z₁, z₂ in [−span, span]", 0.5, 4.0, 2.0, 0.5, key="gen_span")
    seed = c2.number_input("Random seed", 0, 10**6, 0, key="gen_seed")
    uniform = grid_png(checkpoint, version, "uniform", label, 20, span, 0)
    rand = grid_png(checkpoint, version, "random", label, 20, 2.0, int(seed))
    images[0].image(
        uniform, caption=f"20×20 grid over z₁ (→) and z₂ (↑), class {name}", width="stretch", output_format="PNG"
    )
    images[1].image(rand, caption=f"400 random codes z ~ N(0, I), class {name}", width="stretch", output_format="PNG")
    row = c1.container(horizontal=True), c2.container(horizontal=True)
    row[0].download_button("Grid PNG", uniform, f"{stem}_uniform_{label}.png", "image/png", key="dl_uniform",
                           icon=":material/download:")  # fmt: skip
    row[1].download_button("Random PNG", rand, f"{stem}_random_{label}.png", "image/png", key="dl_random",
                           icon=":material/download:")  # fmt: skip
    if slides_of is not None and slides_of[0].config.model.condition == "label":
        run, epoch = slides_of
        with row[0]:
            slides.download(run, [(f"Class {name}, grid", Export("generate", epoch, label=label, span=span))],
                            "gen_slides_uniform")  # fmt: skip
        with row[1]:
            slides.download(run, [(f"Class {name}, random", Export("generate", epoch, mode="random", label=label,
                                                                    seed=int(seed)))], "gen_slides_random")  # fmt: skip


def sliders(checkpoint: str, version: tuple[int, int], net, label: int, name: str) -> None:
    """Two latent dimensions under two sliders that change the image while they move (decoded ahead)."""
    zdim = net.config.latent_dim
    dims = (0, 1) if zdim >= 2 else (0, 0)
    if zdim > 2:
        c1, c2, c3 = st.columns(3)
        a = c1.selectbox("First slider moves", range(zdim), format_func=lambda i: f"z{i + 1}", key="slide_a")
        b = c2.selectbox("Second slider moves", range(zdim), 1, format_func=lambda i: f"z{i + 1}", key="slide_b")
        c3.caption(f"The other {zdim - 2} dimensions stay at 0.")
        dims = (a, b)
    values = tuple(float(v) for v in np.linspace(-3, 3, STEPS))
    axes = [scrub.Axis(f"z{dims[0] + 1}", values, STEPS // 2)]
    if dims[1] != dims[0]:
        axes.append(scrub.Axis(f"z{dims[1] + 1}", values, STEPS // 2))
    png = plane_sprite(checkpoint, version, label, dims, 3.0)
    scrub.show(png, (net.config.height, net.config.width), axes, size=300,
               caption=f"Class <b>{name}</b>. Drag a slider: every position was decoded ahead, so the picture "
                       f"follows the slider as it moves.")  # fmt: skip


def _thumbnails(x: np.ndarray, indices: list[int], key: str, caption) -> int:
    """A row of test images, each with a button under it; returns the picked index (kept in session state)."""
    if st.session_state.get(key) not in indices:
        st.session_state[key] = indices[0]
    cols = st.columns(len(indices))
    for col, i in zip(cols, indices, strict=True):
        col.image(thumbnail_png(x[i], 2), width="stretch", output_format="PNG")
        chosen = st.session_state[key] == i
        if col.button(caption(i), key=f"{key}_{i}", type="primary" if chosen else "secondary", width="stretch"):
            st.session_state[key] = i
            st.rerun()
    return st.session_state[key]


def interpolation(checkpoint: str, version: tuple[int, int], net, x: np.ndarray, y: np.ndarray, label: int,
                  names: list[str]) -> None:  # fmt: skip
    """From a test image of the picked class to one of any class: code and label blended, under a slider."""
    own = [int(i) for i in np.flatnonzero(y == label)]
    if len(own) < 2:
        st.info(f"The test images loaded here hold fewer than two of class {names[label]}.")
        return
    # The morph and its slider beside the two pickers, so that all of it is on the first screen at 1280x720.
    morph, pickers = st.columns([2, 3], gap="medium")
    with pickers:
        st.markdown(f"**From** an image of class {names[label]} (the class picked above)")
        ia = _thumbnails(x, own[:8], "morph_from", lambda i: f"#{i}")
        firsts = [own[1] if k == label else next((int(i) for i in np.flatnonzero(y == k)), None)
                  for k in range(len(names))]  # fmt: skip
        st.markdown("**To** an image of any class")
        ib = _thumbnails(x, [i for i in firsts if i is not None][:10], "morph_to", lambda i: names[int(y[i])])
    t = tuple(float(v) for v in np.linspace(0, 1, STEPS))
    with morph:
        scrub.show(blend_sprite(checkpoint, version, ia, ib, x, y), (net.config.height, net.config.width),
                   [scrub.Axis("t", t, 0)], size=220, stacked=True,
                   caption=f"t = 0: image #{ia} (class {names[int(y[ia])]}); t = 1: image #{ib} (class "
                           f"{names[int(y[ib])]}). The code and the label are blended; drag t.")  # fmt: skip
    st.image(interpolate_png(checkpoint, version, net, ia, ib, x, y, 10),
             caption=f"class {names[int(y[ia])]} → class {names[int(y[ib])]} in 10 steps", width="stretch", output_format="PNG")  # fmt: skip


def same_style(
    checkpoint: str,
    version: tuple[int, int],
    net,
    names: list[str],
    x: np.ndarray | None,
    y: np.ndarray | None,
    label: int,
) -> None:
    """Encode a test image (or the user's picture) under its class, decode the code under every class."""
    from ui.upload import MAX_IMAGE_MB, picture_for

    st.caption("Encode one image under its own class, then decode the same code under every class.")
    own = x is None or st.toggle("Use my own picture", key="style_own")
    if own:
        c = net.config
        file = st.file_uploader(f"A picture (PNG or JPEG, at most {MAX_IMAGE_MB} MB), of the class picked above",
                                type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="style_upload",
                                max_upload_size=MAX_IMAGE_MB)  # fmt: skip
        invert = st.checkbox("Invert (for dark strokes on a light background; MNIST digits are light on dark)",
                             key="style_invert", disabled=c.channels != 1)  # fmt: skip
        if file is None:
            return
        try:
            image, cls = picture_for(c.channels, c.height, c.width, file.getvalue(), invert), label
        except ValueError as err:
            st.error(f"Cannot use {file.name[:80]}: {err}.")
            return
    else:
        own = np.flatnonzero(y == label)  # the picked class applies here too: its test images
        if not len(own):
            st.info(f"No test image of class {names[label]} is loaded here.")
            return
        k = st.number_input(f"Test image of class {names[label]}: number", 0, len(own) - 1, 0, key="style_index")
        image, cls = x[own[k]], int(y[own[k]])
    a, b = st.columns([1, 6])
    a.image(thumbnail_png(image, 2 * scale_for(image.shape[-2])), caption=f"class {names[cls]}", output_format="PNG")
    b.image(restyle_png(checkpoint, version, net, image, cls), caption=" · ".join(names), output_format="PNG")
