"""Generation: the reference's per-class grids, from the API and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from cvae.generate import latent_grid, load_model, load_run, random_images, restyle, uniform_images

ROOT = Path(__file__).resolve().parent.parent


def test_latent_grid_covers_the_span() -> None:
    z = latent_grid(2, n=20, span=2.0)
    assert z.shape == (400, 2)
    assert z[:, 0].min() == -2 and z[:, 0].max() == 2 and len(z[:, 0].unique()) == 20
    assert latent_grid(5, n=3).shape == (9, 5) and (latent_grid(5, n=3)[:, 2:] == 0).all()


def test_api_generates_images_per_class(tiny_run: Path) -> None:
    model = load_model(tiny_run)  # the model itself, with what it was trained with and on
    info, config = model.info, model.run_config
    assert info.num_classes == 10 and config.model.latent_dim == 2 and model.config == config.model
    run = load_run(tiny_run)  # and the rest of the run: checkpoint and metrics
    assert run.checkpoint["epoch"] == 2 and [m["epoch"] for m in run.metrics] == [1, 2]
    grid = uniform_images(model, 3)
    assert grid.shape == (400, 1, 28, 28) and grid.min() >= 0 and grid.max() <= 1
    a, b = random_images(model, 3, count=8, seed=1), random_images(model, 3, count=8, seed=1)
    assert torch.equal(a, b)
    assert restyle(model, torch.zeros(1, 28, 28), 0).shape == (10, 1, 28, 28)


def test_cli_writes_one_grid_per_class(tiny_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cvae.generate", "uniform", str(tiny_run), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = sorted(tmp_path.glob("uniform_class*.png"))
    assert len(files) == 10
    assert Image.open(files[0]).size == (20 * 29 + 1, 20 * 29 + 1)  # 20x20 images of 28 px, 1 px padding
    bad = subprocess.run([sys.executable, "-m", "cvae.generate", "random", str(tmp_path / "nope")],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_checkpoint_claiming_a_huge_network_is_refused_before_allocating(tiny_run: Path, tmp_path: Path) -> None:
    from cvae.checkpoints import load_checkpoint

    payload = load_checkpoint(tiny_run)
    payload["config"]["model"]["mlp_hidden"] = [1_000_000, 1_000_000]  # 10^12 weights if ever built
    torch.save(payload, tmp_path / "huge.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cvae.generate", "uniform", str(tmp_path / "huge.pt")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "parameters" in proc.stderr and "Traceback" not in proc.stderr
