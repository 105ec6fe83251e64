"""The epoch on screen is the model used: every epoch keeps its decoder, and a latent click on epoch 1 of a run
that kept only its last checkpoint decodes epoch 1's own code with epoch 1's decoder: in the page's helper, and in
a real Chromium, where the animation's slider is moved to epoch 1 and a dot clicked."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
import torch

from cvae.artifacts import DECODER_FILE, DecoderSource, decoder_source, load_decoder
from cvae.errors import CheckpointError
from cvae.generate import load_run
from cvae.runs import RunDir

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _open(root: Path, run_id: str):
    from ui.runs import open_run

    return open_run(root, run_id)


def test_a_click_on_epoch_one_decodes_with_epoch_ones_decoder(tiny_run: Path, tmp_path: Path) -> None:
    from ui.pick import reconstruction

    shutil.copytree(tiny_run, tmp_path / "runs" / "tiny")
    run_dir = RunDir(tmp_path / "runs" / "tiny")
    assert not run_dir.epoch_checkpoint(1).is_file()  # only the last epoch's checkpoint was kept
    assert run_dir.artifact(1, DECODER_FILE).is_file() and run_dir.artifact(2, DECODER_FILE).is_file()
    run = _open(tmp_path / "runs", "tiny")
    image, recon, epoch = reconstruction(run, 3, epoch=1)
    assert epoch == 1
    latest = load_run(run_dir.latest_checkpoint).model
    code = torch.from_numpy(np.load(run_dir.artifact(1, "latent.npy"))[3:4])
    label = torch.tensor([int(np.load(run_dir.artifacts / "latent_labels.npy")[3])])
    old = load_run(run_dir.latest_checkpoint).model
    old.decoder.load_state_dict(load_decoder(run_dir.artifact(1, DECODER_FILE), old))
    assert torch.allclose(recon, old.generate(code, label), atol=1e-6)  # epoch 1's code, epoch 1's decoder
    assert (recon - latest.generate(code, label)).abs().max() > 1e-2  # the latest decoder draws that code otherwise
    by_latest = latest.generate(latest.encode(image, label).mu, label)
    assert (recon - by_latest).abs().max() > 1e-3  # what the latest model would have drawn is another picture
    _, now, epoch = reconstruction(run, 3, epoch=2)
    assert epoch == 2 and torch.allclose(now, by_latest, atol=2e-3)  # half precision: well under a grey level


def test_the_app_and_the_figures_take_an_epochs_decoder_from_the_same_place(tiny_run: Path, tmp_path: Path) -> None:
    """The epoch's checkpoint where it was kept; else the latest over which the epoch's decoder is loaded; else,
    for a run from before every epoch kept its decoder, the latest model, which the app then says it shows."""
    from cvae.figures import _model_at, open_run
    from ui.models import decoder_at

    shutil.copytree(tiny_run, tmp_path / "runs" / "tiny")
    run_dir = RunDir(tmp_path / "runs" / "tiny")
    assert decoder_source(run_dir, 1) == DecoderSource(
        run_dir.latest_checkpoint, run_dir.artifact(1, DECODER_FILE), True
    )
    code, label = torch.zeros(1, load_run(run_dir.latest_checkpoint).model.config.latent_dim), torch.tensor([2])
    by_app, epoch = decoder_at(_open(tmp_path / "runs", "tiny"), 1)
    by_figure = _model_at(open_run(run_dir.path), 1)
    assert epoch == 1 and torch.equal(by_app.generate(code, label), by_figure.generate(code, label))
    shutil.copy(run_dir.latest_checkpoint, run_dir.epoch_checkpoint(1))  # as if epoch 1's checkpoint were kept
    assert decoder_source(run_dir, 1) == DecoderSource(run_dir.epoch_checkpoint(1), None, True)
    # an older run that kept only latest.pt: no decoder of epoch 2 and no checkpoint of it either
    for path in (run_dir.artifact(2, DECODER_FILE), run_dir.epoch_checkpoint(1), run_dir.epoch_checkpoint(2)):
        path.unlink()
    assert decoder_source(run_dir, 2) == DecoderSource(run_dir.latest_checkpoint, None, False)


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


@pytest.mark.e2e
def test_a_dot_clicked_on_epoch_one_in_chromium_is_drawn_by_epoch_ones_model(
    tiny_run: Path, tmp_path: Path, app_server
) -> None:
    """The Latent space page at 1280x720: the animation's slider moved to epoch 1 with the mouse, a dot clicked.
    The picture shown is that image's epoch-1 code decoded by epoch 1's decoder, to a grey level; the latest
    model, or its decoder on the same code, draws it several grey levels apart, so the test fails if either is
    used."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    from ui.models import upscale

    shutil.copytree(tiny_run, tmp_path / "runs" / "tiny")
    run_dir = RunDir(tmp_path / "runs" / "tiny")
    with app_server(tmp_path) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                   "--disable-background-networking"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(f"{url}/latent?run=tiny")
        plot = page.locator(".js-plotly-plot").first
        plot.locator(".slider-tick-rect").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        tick, rail = plot.locator(".slider-tick-rect").first.bounding_box(), plot.locator(
            ".slider-rail-touch-rect").bounding_box()  # fmt: skip
        page.mouse.click(tick["x"] + tick["width"] / 2, rail["y"] + rail["height"] / 2)  # the slider's first step
        plot.locator(".slider-container text", has_text="epoch 1").first.wait_for(timeout=10_000)
        page.wait_for_timeout(500)
        dot = plot.locator(".scatterlayer .trace").nth(1).locator("path.point").first.bounding_box()  # drawn at epoch 1
        page.mouse.click(dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
        page.get_by_text("reconstructed, epoch 1").wait_for(timeout=60_000)
        index = int(page.get_by_text("· class").first.inner_text().split("#")[1].split()[0])  # "#17 · class 1"
        src = page.locator('[data-testid="stImage"] img').nth(1).get_attribute("src")
        shown = _pixels(page.request.get(urljoin(page.url, src)).body())
        browser.close()
    from ui.pick import reconstruction

    latest = load_run(run_dir.latest_checkpoint).model
    old = load_run(run_dir.latest_checkpoint).model
    old.decoder.load_state_dict(load_decoder(run_dir.artifact(1, DECODER_FILE), old))
    code = torch.from_numpy(np.load(run_dir.artifact(1, "latent.npy"))[index : index + 1])
    label = torch.tensor([int(np.load(run_dir.artifacts / "latent_labels.npy")[index])])
    with torch.no_grad():
        drawn = {
            "epoch 1": old.generate(code, label),
            "latest decoder": latest.generate(code, label),
            "latest model": reconstruction(_open(tmp_path / "runs", "tiny"), index)[1],  # encoded and decoded anew
        }
    scale = next(s for s in range(1, 16) if _pixels(upscale(drawn["epoch 1"], 1, s)).shape == shown.shape)
    apart = {what: int(np.abs(_pixels(upscale(x, 1, scale)) - shown).max()) for what, x in drawn.items()}
    assert apart["epoch 1"] <= 1 and min(apart["latest decoder"], apart["latest model"]) >= 4, apart


def test_half_precision_decoders_draw_what_full_precision_does(tiny_run: Path) -> None:
    run = RunDir(tiny_run)
    full = load_run(run.latest_checkpoint).model
    half = load_run(run.latest_checkpoint).model
    half.decoder.load_state_dict(load_decoder(run.artifact(2, DECODER_FILE), half))
    z, label = torch.randn(64, 2), torch.arange(64) % 10
    assert (full.generate(z, label) - half.generate(z, label)).abs().max() < 1 / 255


@pytest.mark.parametrize("kind", ["garbage", "pickled", "wrong-shape", "missing-name", "nan", "cut"])
def test_a_hostile_decoder_file_is_refused_in_one_line(tiny_run: Path, tmp_path: Path, kind: str) -> None:
    model = load_run(RunDir(tiny_run).latest_checkpoint).model
    good = dict(np.load(RunDir(tiny_run).artifact(1, DECODER_FILE)))
    path = tmp_path / DECODER_FILE
    if kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "cut":
        path.write_bytes(RunDir(tiny_run).artifact(1, DECODER_FILE).read_bytes()[:300])
    else:
        if kind == "pickled":
            good[next(iter(good))] = np.array([{"x": 1}], dtype=object)
        elif kind == "wrong-shape":
            name = next(iter(good))
            good[name] = np.zeros((3, 3), np.float16)
        elif kind == "missing-name":
            good.pop(next(iter(good)))
        else:
            name = next(iter(good))
            good[name] = np.full_like(good[name], np.nan)
        buffer = io.BytesIO()
        np.savez(buffer, **good)
        path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError) as err:
        load_decoder(path, model)
    assert "\n" not in str(err.value)
