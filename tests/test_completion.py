"""Quadrant completion (Sohn et al. 2015, section 5.1): masking, the KL, the -log p(y | x) estimators, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from cvae.checkpoints import load_checkpoint, save_checkpoint
from cvae.completion import (
    CompletionConfig,
    CompletionModels,
    CompletionTrainConfig,
    Gaussian,
    batch_conditional_nll,
    cli,
    complete,
    completion_loss,
    conditional_nll,
    evaluate_run,
    kl_diag_gaussians,
    load_models,
    log_likelihood_estimate,
    masked_bernoulli_nll,
    quadrant_mask,
    train_completion,
)
from cvae.errors import CheckpointError, ConfigError
from cvae.runs import RunDir

TINY = dict(latent_dim=3, hidden=(16,))


def _tiny_models(quadrants: int = 1, seed: int = 0, **kw) -> CompletionModels:
    torch.manual_seed(seed)
    return CompletionModels(CompletionConfig(quadrants=quadrants, **{**TINY, **kw}))


def _binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ masking


def test_quadrants_are_given_bottom_left_then_top_left_then_top_right():
    one, two, three = (quadrant_mask(k) for k in (1, 2, 3))
    assert one[14:, :14].eq(1).all() and one.sum() == 196  # bottom-left only
    assert two[:, :14].eq(1).all() and two.sum() == 392  # the left half
    assert three.sum() == 588 and three[14:, 14:].eq(0).all()  # all but bottom-right
    assert three[:14, 14:].eq(1).all()
    for bad in (0, 4, True):
        with pytest.raises(ConfigError):
            quadrant_mask(bad)


def test_network_input_zeroes_hidden_pixels_and_appends_the_mask():
    models = _tiny_models(1, mask_channel=True)
    images = torch.ones(2, 1, 28, 28)
    x, hidden = models.inputs(images, 1)
    assert x.shape == (2, 2 * 784) and hidden.shape == (2, 784)
    mask = quadrant_mask(1).flatten()
    assert torch.equal(x[:, :784], mask.expand(2, -1))  # hidden pixels are 0 in the input
    assert torch.equal(x[:, 784:], mask.expand(2, -1))
    assert torch.equal(hidden, 1 - mask.expand(2, -1))


def test_a_fixed_quadrant_model_refuses_another_count():
    with pytest.raises(ConfigError, match="trained with 2"):
        _tiny_models(2).inputs(torch.zeros(1, 784), 1)


def test_given_pixels_never_count_in_the_losses_or_the_metric():
    models = _tiny_models(2).eval()
    target = _binary_images(6).reshape(6, -1)
    x, hidden = models.inputs(target, 2)
    flipped = torch.where(hidden.bool(), target, 1 - target)  # every GIVEN pixel of the target flipped
    assert not torch.equal(flipped, target)

    logits = torch.randn(6, 784)
    a = masked_bernoulli_nll(logits=logits, target=target, hidden=hidden)
    assert torch.equal(a, masked_bernoulli_nll(logits=logits, target=flipped, hidden=hidden))

    def metric(t: torch.Tensor):
        gen = torch.Generator().manual_seed(3)
        return batch_conditional_nll(models, x=x, target=t, hidden=hidden, samples=7, generator=gen)

    same, other = metric(target), metric(flipped)
    for name in same._fields:
        assert torch.equal(getattr(same, name), getattr(other, name)), name
    # control: flipping one HIDDEN pixel does change every estimate
    one_hidden = int(hidden[0].nonzero()[0])
    changed = target.clone()
    changed[0, one_hidden] = 1 - changed[0, one_hidden]
    moved = metric(changed)
    for name in same._fields:
        assert getattr(moved, name)[0] != getattr(same, name)[0], name

    with torch.no_grad():
        torch.manual_seed(0)
        loss_a = completion_loss(models, x=x, target=target, hidden=hidden)
        torch.manual_seed(0)
        loss_b = completion_loss(models, x=x, target=flipped, hidden=hidden)
    assert torch.equal(loss_a.nelbo, loss_b.nelbo) and torch.equal(loss_a.baseline, loss_b.baseline)


# ------------------------------------------------------------------ the KL


def test_kl_between_two_diagonal_gaussians_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    q = Gaussian(torch.randn(5, 4, generator=gen), torch.rand(5, 4, generator=gen) * 2 + 0.05)
    p = Gaussian(torch.randn(5, 4, generator=gen), torch.rand(5, 4, generator=gen) * 2 + 0.05)
    ours = kl_diag_gaussians(q=q, p=p)
    theirs = kl_divergence(Independent(Normal(q.mu, q.std), 1), Independent(Normal(p.mu, p.std), 1))
    assert ours.shape == (5,)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.allclose(kl_diag_gaussians(q=q, p=q), torch.zeros(5), atol=1e-6)  # KL(q || q) = 0


# ------------------------------------------------------------------ the estimator on an exact model


class LinearGaussian:
    """z ~ N(a x, s_p^2 I_Z) and y | z ~ N(C z + d, sigma^2 I_D): p(y | x) = N(C a x + d, s_p^2 C C^T + sigma^2 I)."""

    def __init__(self, seed: int = 0, z_dim: int = 2, y_dim: int = 3) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.a, self.s_p, self.sigma = 0.7, 1.3, 0.5
        self.C = torch.randn(y_dim, z_dim, generator=gen, dtype=torch.float64)
        self.d = torch.randn(y_dim, generator=gen, dtype=torch.float64)
        self.x = torch.randn(4, z_dim, generator=gen, dtype=torch.float64)  # 4 inputs x (the prior mean's input)
        self.y = torch.randn(4, y_dim, generator=gen, dtype=torch.float64) * 2

    def prior(self) -> Gaussian:
        return Gaussian(self.a * self.x, torch.full_like(self.x, self.s_p))

    def log_likelihood(self, z: torch.Tensor) -> torch.Tensor:  # (S, B, Z) -> (S, B)
        mean = z @ self.C.T + self.d
        return Normal(mean, self.sigma).log_prob(self.y).sum(-1)

    def exact(self) -> torch.Tensor:
        cov = self.s_p**2 * self.C @ self.C.T + self.sigma**2 * torch.eye(len(self.d), dtype=torch.float64)
        return MultivariateNormal(self.a * self.x @ self.C.T + self.d, cov).log_prob(self.y)

    def posterior(self) -> MultivariateNormal:
        precision = torch.eye(self.x.shape[1], dtype=torch.float64) / self.s_p**2 + self.C.T @ self.C / self.sigma**2
        cov = torch.linalg.inv(precision)
        mean = ((self.a * self.x) / self.s_p**2 + (self.y - self.d) @ self.C / self.sigma**2) @ cov
        return MultivariateNormal(mean, cov)


def test_importance_sampling_converges_to_the_exact_conditional_likelihood():
    m = LinearGaussian()
    exact = m.exact()
    post = m.posterior()
    # a proposal near the posterior (its marginal means, widened): not exact, so the weights vary
    proposal = Gaussian(post.mean + 0.3, post.variance.sqrt() * 1.5)
    gen = torch.Generator().manual_seed(0)
    est = log_likelihood_estimate(
        log_likelihood=m.log_likelihood, prior=m.prior(), proposal=proposal, samples=20_000, chunk=5000, generator=gen
    )
    assert est.dtype == torch.float64 and est.shape == (4,)
    torch.testing.assert_close(est, exact, rtol=0, atol=0.02)
    # plain Monte Carlo from the prior converges too (more slowly)
    mc = log_likelihood_estimate(
        log_likelihood=m.log_likelihood, prior=m.prior(), proposal=None, samples=200_000, chunk=50_000, generator=gen
    )
    torch.testing.assert_close(mc, exact, rtol=0, atol=0.1)


def test_importance_sampling_is_a_lower_bound_in_expectation_with_few_samples():
    """Jensen: E[log mean w] <= log p(y | x); with 2 samples and a poor proposal the gap is clear."""
    m = LinearGaussian(seed=1)
    exact = m.exact()
    proposal = Gaussian(m.posterior().mean - 1.0, torch.full_like(m.x, 0.4))
    gen = torch.Generator().manual_seed(1)
    runs = torch.stack(
        [
            log_likelihood_estimate(
                log_likelihood=m.log_likelihood, prior=m.prior(), proposal=proposal, samples=2, generator=gen
            )
            for _ in range(2000)
        ]
    )  # (2000, 4)
    assert (runs.mean(0) < exact - 0.05).all()


def test_the_exact_posterior_as_proposal_gives_the_exact_answer_with_one_sample():
    m = LinearGaussian(seed=2, z_dim=1, y_dim=2)  # one latent dim: the posterior is a diagonal Gaussian
    post = m.posterior()
    proposal = Gaussian(post.mean, post.covariance_matrix[..., 0, :1].sqrt())
    est = log_likelihood_estimate(log_likelihood=m.log_likelihood, prior=m.prior(), proposal=proposal, samples=1)
    torch.testing.assert_close(est, m.exact(), rtol=0, atol=1e-9)


def test_estimators_refuse_zero_samples():
    m = LinearGaussian()
    with pytest.raises(Exception, match="at least 1"):
        log_likelihood_estimate(log_likelihood=m.log_likelihood, prior=m.prior(), proposal=None, samples=0)


def test_the_metric_on_a_model_gives_consistent_estimates():
    """IS from q and MC from p estimate the same -log p(y | x); the one-sample -ELBO is looser on average."""
    models = _tiny_models(3).eval()
    images = _binary_images(20, seed=4)
    r = conditional_nll(models, images, quadrants=3, samples=400, batch_size=7)
    assert r.importance.shape == (20,) and r.baseline.dtype == torch.float64
    assert torch.isfinite(torch.stack(list(r))).all()
    # 400 samples: both estimators are close to their limit, which is the same number
    assert (r.importance - r.prior_mc).abs().max() < 5.0
    assert (r.nelbo.mean() >= r.importance.mean() - 1e-6).item()  # the ELBO is the looser bound on average


def test_complete_keeps_given_pixels_and_draws_distinct_samples():
    models = _tiny_models(1)
    image = _binary_images(1)[0]
    out = complete(models, image, quadrants=1, samples=5, generator=torch.Generator().manual_seed(0))
    assert out.samples.shape == (5, 28, 28) and out.baseline.shape == (28, 28)
    given = quadrant_mask(1).bool()
    for picture in (*out.samples, out.baseline, out.given):
        assert torch.equal(picture[given], image[0][given])
    assert out.given[~given].eq(0.5).all()
    assert not torch.allclose(out.samples[0], out.samples[1])
    walk = complete(models, image, quadrants=1, noise=torch.zeros(2, 3))
    assert torch.equal(walk.samples[0], walk.samples[1])  # same noise, same completion
    with pytest.raises(Exception, match="noise must have shape"):
        complete(models, image, quadrants=1, noise=torch.zeros(2, 5))


# ------------------------------------------------------------------ training, checkpoints, command line


def test_two_step_train_checkpoint_round_trip_evaluate_and_resume(tmp_path: Path):
    config = CompletionConfig(quadrants=1, **TINY)
    train = CompletionTrainConfig(epochs=1, batch_size=32, train_subset=64, test_subset=40, eval_samples=3, threads=1)
    run_dir = tmp_path / "run"
    result = train_completion(config, train, run_dir=run_dir, quiet=True)
    run = RunDir(run_dir)
    assert run.read_status()["state"] == "finished"
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    saved = json.loads(run.config_path.read_text())
    assert saved["kind"] == "quadrant-completion" and saved["model"]["quadrants"] == 1
    assert (run.artifacts / "completions_q1.png").is_file()
    assert set(result.evaluation) == {"q1"} and result.evaluation["q1"]["images"] == 40
    assert math.isfinite(result.evaluation["q1"]["importance_nll"])

    payload = load_checkpoint(run.latest_checkpoint)  # weights_only=True inside
    models = load_models(run_dir)
    for key, value in models.state_dict().items():
        assert torch.equal(value, payload["model"][key])
    again = evaluate_run(run_dir, samples=3, test_subset=40)
    assert again["q1"]["baseline_nll"] == pytest.approx(result.evaluation["q1"]["baseline_nll"], rel=1e-6)

    # resume for one more epoch (--epochs counts the new ones, as cvae.train): two metric lines, the model moved
    train2 = CompletionTrainConfig(epochs=1, batch_size=32, eval_samples=0, threads=1)  # subsets come from the run
    train_completion(CompletionConfig(quadrants=2), train2, resume=run_dir, quiet=True)  # the saved model wins
    resumed = json.loads(run.config_path.read_text())
    assert resumed["train"]["train_subset"] == 64 and resumed["model"]["quadrants"] == 1
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert run.read_status()["state"] == "finished" and run.read_status()["epochs"] == 2
    moved = load_models(run_dir)
    assert any(not torch.equal(v, models.state_dict()[k]) for k, v in moved.state_dict().items())


def test_a_random_count_model_trains_and_evaluates_every_count(tmp_path: Path):
    config = CompletionConfig(quadrants=0, mask_channel=True, **TINY)
    train = CompletionTrainConfig(epochs=1, batch_size=32, train_subset=64, test_subset=10, eval_samples=2, threads=1)
    result = train_completion(config, train, run_dir=tmp_path / "mixed", quiet=True)
    assert set(result.evaluation) == {"q1", "q2", "q3"}
    assert {"test_nelbo_q1", "test_nelbo_q3"} <= set(result.metrics[0])
    with pytest.raises(ConfigError, match="mask channel"):
        CompletionConfig(quadrants=0, mask_channel=False).validate()


def test_the_command_line_trains_evaluates_and_refuses_bad_input(tmp_path: Path, capsys):
    run_dir = tmp_path / "cli"
    args = ["--quadrants", "3", "--epochs", "1", "--train-subset", "32", "--test-subset", "8", "--hidden", "8",
            "-z", "2", "--eval-samples", "2", "--threads", "1", "--run-dir", str(run_dir)]  # fmt: skip
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "importance sampling" in out and "baseline network" in out
    assert cli(["--evaluate", str(run_dir), "--eval-samples", "2", "--test-subset", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["q3"]["images"] == 8
    figure = tmp_path / "figures" / "digit.png"
    assert cli(["--evaluate", str(run_dir), "--eval-samples", "0", "--figure", str(figure), "--figure-index", "3"]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and capsys.readouterr().out == ""

    for bad, message in (
        (["--quadrants", "5"], "quadrants must be 1, 2 or 3"),
        (["--alpha", "1.5"], "alpha must be between 0 and 1"),
        (["--evaluate", str(tmp_path / "nowhere")], "checkpoint not found"),
        (["--evaluate", str(run_dir), "--figure", str(figure), "--figure-index", "10000"], "between 0 and 9999"),
    ):
        assert cli(bad) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1

    other = tmp_path / "other.pt"  # a cvae checkpoint of another kind
    save_checkpoint(other, {"model": {}, "config": {"data": {}}})
    with pytest.raises(CheckpointError, match="not a quadrant-completion run"):
        load_models(other)
    with pytest.raises(SystemExit) as exit_info:
        cli(["--epochs", "0"])
    assert exit_info.value.code == 2
