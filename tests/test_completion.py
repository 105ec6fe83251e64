"""Digit completion (Sohn et al. 2015, section 5.1) as a condition of the one CVAE family: masking, the
conditional prior's KL, the scored pixels, the one estimator, training, old run folders."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

import cvae
from cvae.checkpoints import load_checkpoint, save_checkpoint, validate_checkpoint
from cvae.config import DataConfig, ModelConfig, RunConfig
from cvae.data import load_data
from cvae.errors import CheckpointError, ConfigError, CVAEError
from cvae.estimators import EVAL_SEED, elbo_per_image, iwae_per_image
from cvae.evaluate import PYRO_PARTICLES, entropy_floor, evaluate_checkpoint
from cvae.evaluate import cli as evaluate_cli
from cvae.generate import complete, load_model, load_run
from cvae.likelihoods import DiagonalGaussian
from cvae.model import CVAE, Condition, quadrant_masks
from cvae.runs import RunDir

LEGACY = Path(__file__).parent / "data" / "legacy"  # run folders written by the version before the one family
SMALL = dict(dataset="MNIST", batch_size=32, train_subset=64, test_subset=40, threads=1, quiet=True)


def _config(quadrants: int = 1, **kw) -> ModelConfig:
    values = dict(channels=1, height=28, width=28, num_classes=10, condition="quadrants", quadrants=quadrants,
                  arch="mlp", mlp_hidden=(16,), latent_dim=3, prior="conditional", baseline=True,
                  mask_channel=quadrants == 0)  # fmt: skip
    return ModelConfig(**{**values, **kw})


def _model(quadrants: int = 1, seed: int = 0, **kw) -> CVAE:
    torch.manual_seed(seed)
    return CVAE(_config(quadrants, **kw)).eval()


def _binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the condition


def test_quadrants_are_given_bottom_left_then_top_left_then_top_right():
    one, two, three = quadrant_masks(_config()).view(3, 28, 28)
    assert one[14:, :14].eq(1).all() and one.sum() == 196  # bottom-left only
    assert two[:, :14].eq(1).all() and two.sum() == 392  # the left half
    assert three.sum() == 588 and three[14:, 14:].eq(0).all()  # all but bottom-right
    assert three[:14, 14:].eq(1).all()
    model = _model(0)
    for bad in (0, 4, True):
        with pytest.raises(ConfigError):
            model.condition(torch.zeros(1, 1, 28, 28), None, bad)


def test_the_condition_zeroes_hidden_pixels_appends_the_mask_and_scores_the_rest():
    model = _model(1, mask_channel=True)
    cond = model.condition(torch.ones(2, 1, 28, 28), None)
    mask = quadrant_masks(model.config)[0]
    assert cond.code.shape == (2, 2 * 784) and cond.dense
    assert torch.equal(cond.code[:, :784], mask.expand(2, -1))  # hidden pixels are 0 in c
    assert torch.equal(cond.code[:, 784:], mask.expand(2, -1))
    assert torch.equal(cond.scored.flatten(1), 1 - mask.expand(2, -1))


def test_a_fixed_quadrant_model_refuses_another_count():
    with pytest.raises(ConfigError, match="trained with 2"):
        _model(2).condition(torch.zeros(1, 1, 28, 28), None, 1)


def test_given_pixels_never_count_in_the_objective_or_the_estimator():
    model = _model(2)
    x = _binary_images(6)
    given = quadrant_masks(model.config)[1].view(1, 1, 28, 28).bool()
    flipped = torch.where(given, 1 - x, x)  # every GIVEN pixel flipped... as the target only
    labels = torch.zeros(6, dtype=torch.long)

    def terms(target: torch.Tensor) -> dict[str, torch.Tensor]:
        cond = model.condition(x, labels)  # the condition keeps the true given part
        torch.manual_seed(0)
        q = model.encode(target, cond)
        out = model.decode(q.sample(), cond)
        return {"recon": model.likelihood.nll(out, target, cond.scored), "kl": q.kl(model.prior(cond)),
                "baseline": model.likelihood.nll(model.baseline(cond.code), target, cond.scored)}  # fmt: skip

    same, other = terms(x), terms(flipped)
    for name in same:
        assert torch.equal(same[name], other[name]), name
    one_hidden = x.clone()
    one_hidden[0, 0, 0, 27] = 1 - one_hidden[0, 0, 0, 27]  # top-right: hidden with 2 quadrants given
    moved = terms(one_hidden)
    assert all(moved[name][0] != same[name][0] for name in same)
    # the estimator reads the target only through the scored pixels and the condition
    a = iwae_per_image(model, x, labels, k=7).log_px
    changed = iwae_per_image(model, one_hidden, labels, k=7).log_px
    assert torch.isfinite(a).all() and changed[0] != a[0] and torch.equal(changed[1:], a[1:])


def test_kl_between_two_diagonal_gaussians_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    q = DiagonalGaussian(torch.randn(5, 4, generator=gen), torch.rand(5, 4, generator=gen) * 2 + 0.05)
    p = DiagonalGaussian(torch.randn(5, 4, generator=gen), torch.rand(5, 4, generator=gen) * 2 + 0.05)
    theirs = kl_divergence(Independent(Normal(q.mu, q.std), 1), Independent(Normal(p.mu, p.std), 1))
    torch.testing.assert_close(q.kl(p), theirs, rtol=1e-5, atol=1e-5)
    assert torch.allclose(q.kl(q), torch.zeros(5), atol=1e-6)  # KL(q || q) = 0
    standard = DiagonalGaussian(torch.zeros(5, 4), torch.ones(5, 4))
    torch.testing.assert_close(q.kl(None), q.kl(standard), rtol=1e-5, atol=1e-5)  # None is N(0, I)
    z = torch.randn(3, 5, 4, generator=gen)
    torch.testing.assert_close(
        p.log_prob(z), Independent(Normal(p.mu, p.std), 1).log_prob(z).double(), rtol=1e-5, atol=1e-4
    )


def test_the_decoder_computes_the_given_part_once_for_all_samples():
    model = _model(3)
    x = _binary_images(4)
    cond = model.condition(x, None)
    z = torch.randn(5, 4, 3)
    split = model.decode_samples(z, cond)
    code = cond.code.expand(5, -1, -1).reshape(20, -1)
    plain = model.decode(z.reshape(20, 3), Condition(code, None))
    torch.testing.assert_close(split, plain, rtol=1e-5, atol=1e-5)


def test_importance_sampling_and_prior_monte_carlo_agree_and_bound_from_above():
    """IS from q and MC from p estimate the same -log p(y | x); the one-sample -ELBO is looser on average."""
    model = _model(3)
    x, labels = _binary_images(20, seed=4), torch.zeros(20, dtype=torch.long)
    importance = -iwae_per_image(model, x, labels, k=400).log_px
    prior = -iwae_per_image(model, x, labels, k=400, proposal="prior").log_px
    nelbo = elbo_per_image(model, x, labels).nelbo
    assert torch.isfinite(importance).all() and (importance - prior).abs().max() < 5.0
    assert float(nelbo.mean()) >= float(importance.mean()) - 1e-6
    with pytest.raises(Exception, match="proposal"):
        iwae_per_image(model, x, labels, k=2, proposal="uniform")


def test_complete_keeps_given_pixels_and_draws_distinct_samples():
    model = _model(1)
    image = _binary_images(1)[0]
    out = complete(model, image, quadrants=1, samples=5, generator=torch.Generator().manual_seed(0))
    assert out.samples.shape == (5, 28, 28) and out.baseline.shape == (28, 28)
    given = quadrant_masks(model.config)[0].view(28, 28).bool()
    for picture in (*out.samples, out.baseline, out.given):
        assert torch.equal(picture[given], image[0][given])
    assert out.given[~given].eq(0.5).all()
    assert not torch.allclose(out.samples[0], out.samples[1])
    walk = complete(model, image, quadrants=1, noise=torch.zeros(2, 3))
    torch.testing.assert_close(walk.samples[0], walk.samples[1])  # same noise, same completion
    with pytest.raises(Exception, match="noise must have shape"):
        complete(model, image, quadrants=1, noise=torch.zeros(2, 5))


# ------------------------------------------------------------------ training, checkpoints, command line


def test_a_random_count_run_writes_overall_and_per_count_figures(tmp_path: Path):
    result = cvae.train_model(condition="quadrants", quadrants=0, latent_dim=3, mlp_hidden=(16,), epochs=1,
                              run_dir=str(tmp_path / "mixed"), **SMALL)  # fmt: skip
    record = result.metrics[0]
    assert {"test_nelbo", "test_baseline_nll", "test_nelbo_q1", "test_nelbo_q3"} <= set(record)
    assert record["test_nelbo"] == pytest.approx(sum(record[f"test_nelbo_q{k}"] for k in (1, 2, 3)) / 3)
    assert json.loads((tmp_path / "mixed" / "config.json").read_text())["model"]["mask_channel"] is True
    report = evaluate_checkpoint(tmp_path / "mixed", iw_samples=2, test_subset=10)
    assert report["quadrants"] == 0 and {"iwae_nll_q2", "prior_mc_nll_q3", "baseline_nll_q1"} <= set(report)
    model = load_model(tmp_path / "mixed")
    assert model.config.mask_channel and model.run_config.model.condition == "quadrants"


def test_an_oversized_completion_checkpoint_is_refused_before_any_allocation(tmp_path: Path):
    payload = load_checkpoint(LEGACY / "completion-q1")
    payload["config"]["model"]["mlp_hidden"] = (1_000_000,)
    path = tmp_path / "huge.pt"
    save_checkpoint(path, {k: v for k, v in payload.items() if k != "format_version"})
    with pytest.raises(CheckpointError, match="parameters"):
        load_model(path)
    out = subprocess.run([sys.executable, "-m", "cvae.evaluate", str(path)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 2 and "parameters" in out.stderr and out.stderr.count("\n") == 1


# ------------------------------------------------------------------ run folders of the version before


@pytest.mark.parametrize("name", ["completion-q1", "completion-mixed", "label-mlp"])
def test_old_run_folders_load_evaluate_and_resume(tmp_path: Path, name: str):
    run = tmp_path / name
    shutil.copytree(LEGACY / name, run)
    loaded = load_run(run)
    assert loaded.checkpoint["epoch"] == 1 and [m["epoch"] for m in loaded.metrics] == [1]
    validate_checkpoint(load_checkpoint(run), expect_config=RunDir(run).read_config())  # every field checked
    report = evaluate_checkpoint(run, iw_samples=2, test_subset=8)
    assert math.isfinite(report["nelbo"]) and report["test_images"] == 8
    more = cvae.train_model(resume_path=str(run), epochs=1, quiet=True, threads=1)
    assert [m["epoch"] for m in more.metrics] == [1, 2] and more.state == "finished"
    saved = json.loads((run / "config.json").read_text())
    assert "kind" not in saved and saved["model"]["condition"] == ("label" if name == "label-mlp" else "quadrants")


def test_an_old_completion_run_gives_the_same_baseline_as_before():
    """The converted weights compute what the old networks computed: the deterministic baseline exactly
    (figures from the version before, on the run's 16 test digits)."""
    report = evaluate_checkpoint(LEGACY / "completion-mixed", iw_samples=1, test_subset=16)
    before = {1: 409.88386154174805, 2: 273.58222007751465, 3: 134.03346633911133}
    for k, value in before.items():
        assert report[f"baseline_nll_q{k}"] == pytest.approx(value, rel=1e-6)


# ------------------------------------------------------------------ Pyro's protocol


def _grey_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def test_the_particle_elbo_is_pyros_trace_elbo_written_out():
    """The mean of K log weights from q is Trace_ELBO(num_particles=K) with the recognition network as guide:
    over K draws z ~ q, log p(y | x, z) of the hidden grey pixels + log p(z | x) - log q(z | x, y), averaged."""
    model, k = _model(1), PYRO_PARTICLES
    x, labels = _grey_images(5), torch.zeros(5, dtype=torch.long)
    got = iwae_per_image(model, x, labels, k=k).mean_log_w
    with torch.no_grad():
        cond = model.condition(x, labels)
        q, p = model.encode(x, cond), model.prior(cond)
        torch.manual_seed(EVAL_SEED)  # the estimator's own draws
        z = q.mu + q.std * torch.randn(k, 5, 3)  # (K, B, Z)
        hidden = (1 - quadrant_masks(model.config)[0]).bool()  # (784,): the pixels that count
        logits = torch.stack([model.decode(zk, cond).flatten(1)[:, hidden] for zk in z])  # (K, B, 588)
        log_y = Bernoulli(logits=logits, validate_args=False).log_prob(x.flatten(1)[:, hidden]).sum(-1)
        log_p = Independent(Normal(p.mu, p.std), 1).log_prob(z)
        log_q = Independent(Normal(q.mu, q.std), 1).log_prob(z)
    assert got is not None and got.shape == (5,)
    torch.testing.assert_close(got, (log_y + log_p - log_q).mean(0).double(), rtol=1e-5, atol=1e-3)
    # its expectation is the ELBO, not the likelihood: below the importance-sampled bound on average
    assert float(got.mean()) <= float(iwae_per_image(model, x, labels, k=k).log_px.mean())


def test_the_entropy_floor_counts_the_hidden_grey_pixels_only():
    model = _model(1)
    hidden = (1 - quadrant_masks(model.config)[0]).view(1, 1, 28, 28)
    half = torch.full((2, 1, 28, 28), 0.5)
    assert entropy_floor(model, half, 1).tolist() == pytest.approx([588 * math.log(2)] * 2)
    given_grey = torch.where(hidden.bool(), _binary_images(2), half)  # grey where given, 0/1 where hidden
    assert entropy_floor(model, given_grey, 1).tolist() == [0.0, 0.0]


def test_pyros_protocol_scores_grey_targets_with_its_particle_elbo(tmp_path: Path):
    grey = cvae.train_model(condition="quadrants", quadrants=1, binarize="none", latent_dim=3, mlp_hidden=(16,),
                            epochs=1, run_dir=str(tmp_path / "grey"), **SMALL).run_dir  # fmt: skip
    assert math.isfinite(json.loads((grey / "metrics.jsonl").read_text().splitlines()[0])["test_nelbo"])
    data = load_data(DataConfig(dataset="MNIST", binarize="none", test_subset=12))
    assert not bool(((data.test_x == 0) | (data.test_x == 1)).all())  # the protocol's targets are grey
    for run, trained in ((grey, "none"), (LEGACY / "completion-q1", "static")):
        report = evaluate_checkpoint(run, iw_samples=0, test_subset=12, protocol="pyro")
        assert (report["protocol"], report["binarization"], report["trained_binarization"]) == ("pyro", "none", trained)
        assert report["particles"] == PYRO_PARTICLES == 10
        model = load_model(run)
        mc = iwae_per_image(model, data.test_x, data.test_y, k=PYRO_PARTICLES).mean_log_w
        assert report["mc_nelbo"] == pytest.approx(-float(mc.mean()))
        floor = float(entropy_floor(model, data.test_x, 1).mean())
        assert report["entropy_floor"] == pytest.approx(floor) and 0 < floor < report["mc_nelbo"]
    ours = evaluate_checkpoint(LEGACY / "completion-q1", iw_samples=0, test_subset=12)
    assert ours["protocol"] == "ours" and ours["binarization"] == "static" and "mc_nelbo" not in ours


def test_grey_targets_belong_to_digit_completion_alone():
    RunConfig(data=DataConfig(binarize="none"), model=_config()).validate()  # Bernoulli on grey: completion
    with pytest.raises(ConfigError, match="only for condition quadrants"):
        RunConfig(data=DataConfig(binarize="none"), model=_config(condition="label", prior="standard",
                                                                  baseline=False)).validate()  # fmt: skip


def test_a_bad_protocol_is_one_line_and_exit_2(tiny_run: Path, capsys: pytest.CaptureFixture[str]):
    for bad in ("paper", "Pyro", ""):
        with pytest.raises(SystemExit) as exc:
            evaluate_cli([str(LEGACY / "completion-q1"), "--protocol", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--protocol" in err and "Traceback" not in err
    assert evaluate_cli([str(tiny_run), "--protocol", "pyro"]) == 2  # a label run: nothing to complete
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "digit completion" in err
    with pytest.raises(CVAEError, match="protocol"):
        evaluate_checkpoint(LEGACY / "completion-q1", protocol="paper")
