"""Shared fixtures: real MNIST (shipped in data/), tiny configs, seeded runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvae.train import main

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch MLP run on 512 real MNIST images (about 3 s): a run folder to read."""
    root = tmp_path_factory.mktemp("runs")
    result = main(
        dataset="MNIST", decoder_type="Bernoulli", latent_dim=2, epochs=2, batch_size=64,
        learning_rate=1e-3, arch="mlp", mlp_hidden=(64,), train_subset=512, test_subset=256,
        latent_subset=200, run_dir=str(root / "tiny"), quiet=True,
    )  # fmt: skip
    return result.run_dir
