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
from cvae.completion import KIND, is_completion_run, load_models
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
        outputs.append(vae.elbo_terms(x, labels).nelbo)
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
    model, config, _, _ = load_model(run)
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
    assert config["kind"] == KIND and config["condition"] == "quadrants" and config["model"]["quadrants"] == 1
    assert config["model"]["latent_dim"] == 3 and config["model"]["hidden"] == [32]
    assert config["train"]["learning_rate"] == 1e-3  # the completion preset, as options not given
    assert is_completion_run(run) and not is_completion_run(tmp_path / "nothing")
    assert RunDir(run).read_status()["state"] == "finished" and RunDir(run).latest_checkpoint.is_file()
    assert [m["epoch"] for m in result.metrics] == [1] and result.state == "finished"
    more = cvae.train_model(resume_path=str(run), epochs=1, quiet=True)
    assert more.metrics[-1]["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert load_models(run).config.quadrants == 1
    # python -m cvae.evaluate RUN prints the -log p(y | x) table for it
    out = subprocess.run([sys.executable, "-m", "cvae.evaluate", str(run), "--iw-samples", "3", "--test-subset",
                          "20"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "-log p(y | x)" in out.stdout and "baseline" in out.stdout and "1 quadrant(s) given" in out.stdout
    # a label CVAE's commands refuse it with one line
    out = subprocess.run([sys.executable, "-m", "cvae.generate", str(run)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_cli_condition_quadrants_refuses_options_it_does_not_use(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cvae.train", "--condition", "quadrants", "--refine-steps", "5",
                          "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "refine_steps" in out.stderr and "Traceback" not in out.stderr
