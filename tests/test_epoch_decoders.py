"""The epoch on screen is the model used: every epoch keeps its decoder, and a latent click on epoch 1 of a run
that kept only its last checkpoint decodes epoch 1's own code with epoch 1's decoder."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cvae.artifacts import DECODER_FILE, load_decoder
from cvae.errors import CheckpointError
from cvae.generate import load_run
from cvae.runs import RunDir


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
    by_latest = latest.generate(latest.encode(image, label).mu, label)
    assert (recon - by_latest).abs().max() > 1e-3  # what the latest model would have drawn is another picture
    _, now, epoch = reconstruction(run, 3, epoch=2)
    assert epoch == 2 and torch.allclose(now, by_latest, atol=2e-3)  # half precision: well under a grey level


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
