"""scripts.reproduce end to end on a tiny setting (--smoke): figures, results.json, RESULTS.md."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def reproduce():
    return importlib.import_module("scripts.reproduce")


def _image_folder(root: Path) -> Path:
    """A CIFAR-shaped image folder: 32x32 RGB PNGs, train/ and test/, two classes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_smoke_writes_figures_and_tables(reproduce, tmp_path: Path) -> None:
    cifar = _image_folder(tmp_path / "cifar")
    out = tmp_path / "results"
    argv = ["--smoke", "--quiet", "--out", str(out), "--runs-root", str(tmp_path / "runs"),
            "--cifar-dir", str(cifar), "--only", "mnist_z2,cifar_learned"]  # fmt: skip
    assert reproduce.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["smoke"] and results["machine"]["cores"] >= 1
    z2 = results["experiments"]["mnist_z2"]
    assert z2["epochs"] == 2 and z2["train_seconds"] > 0 and len(z2["metrics"]) == 2
    assert z2["train"]["batch_size"] == 64 and z2["train"]["learning_rate"] == 1e-4 and z2["train"]["latent_dim"] == 2
    assert [p["epoch"] for p in z2["curve"]] == [1, 2]  # IWAE at every numbered checkpoint
    assert all(p["iwae_nll"] > 0 and p["iw_samples"] == 5 for p in z2["curve"])
    assert z2["final"]["binarization"] == "static" and z2["final"]["iwae_nll"] > 0
    assert not (tmp_path / "runs" / "reproduce-mnist_z2" / "checkpoints" / "epoch_0001.pt").exists()  # pruned
    for name in ("mnist_z2_recon.png", "mnist_z2_curve.png", "mnist_z2_uniform.png", "mnist_z2_random.png",
                 "cifar_learned_recon.png"):  # fmt: skip
        assert (out / name).stat().st_size > 1000, name
    with Image.open(out / "mnist_z2_latent.gif") as gif:
        assert gif.n_frames == 2
    cifar_final = results["experiments"]["cifar_learned"]["final"]
    assert cifar_final["bpd_kind"].startswith("8-bit") and 0 < cifar_final["bpd_iwae"] <= cifar_final["bpd_elbo"] + 0.05
    table = (out / "RESULTS.md").read_text()
    assert "Smoke run" in table and "bits/dim" in table and "142.8" in table and "mnist_z2_latent.gif" in table


def test_bad_options_exit_2(reproduce, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reproduce.main(["--only", "nope", "--out", str(tmp_path)]) == 2
    assert reproduce.main(["--epochs", "mnist_z2=x", "--out", str(tmp_path)]) == 2
    assert reproduce.main(["--only", "cifar_fixed", "--cifar-dir", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("error:") == 3
