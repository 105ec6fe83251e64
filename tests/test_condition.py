"""The condition option: label (the reference), none (a plain VAE) and quadrants (digit completion).

Each through train, resume, evaluate and generate, on a few hundred real MNIST images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cvae
from cvae.config import ModelConfig
from cvae.errors import ConfigError
from cvae.evaluate import evaluate_checkpoint
from cvae.generate import generate_images, load_model
from cvae.model import CVAE
from cvae.runs import RunDir

SMALL = dict(dataset="MNIST", epochs=1, batch_size=64, train_subset=256, test_subset=128, threads=1, quiet=True)


def _model(condition: str, arch: str) -> CVAE:
    torch.manual_seed(0)
    return CVAE(ModelConfig(channels=1, height=28, width=28, num_classes=10, latent_dim=2, arch=arch,
                            condition=condition))  # fmt: skip


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_condition_none_is_a_vae_that_never_sees_the_label(arch: str) -> None:
    vae, cvae_model = _model("none", arch), _model("label", arch)
    # the label's inputs are gone: 10 extra columns (conv encoder) or inputs (mlp) and 10 decoder inputs
    assert sum(p.numel() for p in vae.parameters()) < sum(p.numel() for p in cvae_model.parameters())
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(1))
    outputs = []
    for labels in (torch.tensor([0, 1, 2, 3]), torch.tensor([9, 9, 9, 9])):
        torch.manual_seed(5)
        outputs.append(vae.objective(x, labels).nelbo)
    assert torch.equal(*outputs)
    z = torch.randn(3, 2)
    vae.eval()
    assert torch.equal(vae.generate(z, torch.tensor([0, 0, 0])), vae.generate(z, torch.tensor([7, 7, 7])))


def test_condition_none_trains_resumes_evaluates_and_generates(tmp_path: Path) -> None:
    run = tmp_path / "vae"
    result = cvae.train_model(condition="none", arch="mlp", mlp_hidden=(64,), latent_dim=2, run_dir=str(run), **SMALL)
    assert json.loads((run / "config.json").read_text())["model"]["condition"] == "none"
    more = cvae.train_model(resume_path=str(run), epochs=1, quiet=True)
    assert more.metrics[-1]["epoch"] == 2 and result.run_dir == more.run_dir
    model = load_model(run)
    config = model.run_config
    assert config.model.condition == "none" and config.model.label_width == 0
    report = evaluate_checkpoint(run, iw_samples=5, test_subset=64)
    assert 0 < report["nelbo"] < 800
    a, b = (generate_images(model, label=k, n=2, seed=3) for k in (1, 8))
    assert torch.equal(a, b)  # generation ignores the class
    with pytest.raises(ConfigError, match="condition"):  # a run keeps its condition
        cvae.train_model(resume_path=str(run), epochs=1, condition="label", quiet=True)


def test_condition_label_is_the_default_and_keeps_the_reference_layers() -> None:
    assert ModelConfig(channels=1, height=28, width=28, num_classes=10).condition == "label"
    model = _model("label", "conv")
    assert model.config.label_width == 10
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 15.0  # REFERENCE.md, as test_model


def test_quadrants_needs_mnist_and_the_mlp() -> None:
    with pytest.raises(ConfigError, match="quadrants"):
        cvae.train_model(condition="quadrants", arch="conv", epochs=1, quiet=True)
    with pytest.raises(ConfigError, match="quadrants"):
        cvae.train_model(condition="quadrants", dataset="CIFAR10", epochs=1, quiet=True)
    with pytest.raises(ConfigError, match="quadrants"):
        cvae.train_model(condition="quadrants", quadrants=4, epochs=1, quiet=True)


def test_condition_quadrants_trains_resumes_and_evaluates_through_train_model(tmp_path: Path) -> None:
    run = tmp_path / "q1"
    result = cvae.train_model(condition="quadrants", quadrants=1, latent_dim=3, mlp_hidden=(32,),
                              run_dir=str(run), **SMALL)  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    model = config["model"]
    assert model["condition"] == "quadrants" and model["quadrants"] == 1 and "kind" not in config
    assert model["latent_dim"] == 3 and model["mlp_hidden"] == [32]
    assert model["prior"] == "conditional" and model["baseline"] is True  # the completion preset, not given
    assert config["train"]["learning_rate"] == 1e-3
    assert RunDir(run).read_status()["state"] == "finished" and RunDir(run).latest_checkpoint.is_file()
    assert [m["epoch"] for m in result.metrics] == [1] and result.state == "finished"
    assert {"test_nelbo", "test_baseline_nll", "train_baseline_nll"} <= set(result.metrics[0])
    assert (run / "batches.jsonl").stat().st_size > 0  # the Train page's live curve
    more = cvae.train_model(resume_path=str(run), epochs=1, quiet=True)
    assert more.metrics[-1]["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert load_model(run).config.quadrants == 1
    # python -m cvae.evaluate RUN prints the -log p(y | x) table for it
    out = subprocess.run([sys.executable, "-m", "cvae.evaluate", str(run), "--iw-samples", "3", "--test-subset",
                          "20"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "-log p(y | x)" in out.stdout and "baseline" in out.stdout and "1 quadrant(s)" in out.stdout
    # the label model's generation refuses it with one line; its completion sheet is made
    out = subprocess.run([sys.executable, "-m", "cvae.generate", "uniform", str(run)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    sheet = tmp_path / "sheet.png"
    out = subprocess.run([sys.executable, "-m", "cvae.generate", "completion", str(run), "--index", "3,4",
                          "--out", str(sheet)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_condition_quadrants_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    for flags, message in ((["--mask-channel", "true"], "mask_channel"), (["--alpha", "1.5"], "alpha"),
                           (["--condition", "none", "--baseline", "true"], "condition none")):  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "cvae.train", *flags, "--run-dir", str(tmp_path / "r")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (flags, out.stderr)
        assert not (tmp_path / "r" / "config.json").exists()
