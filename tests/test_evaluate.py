"""The estimators against known answers, the discretization, and the command line.

The known answer: a linear-Gaussian CVAE, p(z) = N(0, I), p(x | z, y) =
N(W z + b_y, sigma^2 I), whose marginal p(x | y) = N(b_y, W W^T + sigma^2 I)
and posterior are exact Gaussians. It is a real `CVAE` (the MLP architecture
with no hidden layer is linear both ways) whose decoder mean is made linear
by an identity-mean likelihood, so the estimators run through the same
encode / decode / nll code as the command line.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from cvae.config import ModelConfig
from cvae.estimators import (
    discretized_gaussian_log_prob,
    discretized_gaussian_nll,
    elbo_per_image,
    evaluate_elbo,
    inference_gap_per_image,
    is_8bit,
    iwae_per_image,
    refined_nelbo,
)
from cvae.evaluate import cli
from cvae.likelihoods import Likelihood
from cvae.model import CVAE, STD_FLOOR
from cvae.runs import read_jsonl
from cvae.train import main

D_SHAPE = (1, 2, 3)  # (C, H, W): D = 6
Z = 2
K_CLASSES = 3
SIGMA = 0.5


@dataclass(frozen=True)
class IdentityMeanGaussian(Likelihood):
    """The Gaussian likelihood with mean = decoder output (no sigmoid): a linear decoder."""

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, : self.channels]


class LinearGaussian:
    """Parameters of the exact model, float64."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        d = math.prod(D_SHAPE)
        q, _ = torch.linalg.qr(torch.randn(d, Z, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([1.5, 0.7], dtype=torch.float64)  # orthogonal columns: W^T W diagonal
        self.B = torch.randn(d, K_CLASSES, generator=g, dtype=torch.float64)  # class means b_y
        wtw = self.W.T @ self.W
        self.S = torch.linalg.inv(torch.eye(Z, dtype=torch.float64) + wtw / SIGMA**2)  # posterior cov, diagonal
        self.A = self.S @ self.W.T / SIGMA**2  # posterior mean = A (x - b_y)

    def sample(self, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, K_CLASSES, (n,), generator=g)
        z = torch.randn(n, Z, generator=g, dtype=torch.float64)
        x = self.B.T[y] + z @ self.W.T + SIGMA * torch.randn(n, self.W.shape[0], generator=g, dtype=torch.float64)
        return x.float().view(n, *D_SHAPE), y

    def log_px(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self.W.shape[0]
        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(d, dtype=torch.float64)
        return MultivariateNormal(self.B.T[y], covariance_matrix=cov).log_prob(x.double().flatten(1))

    def elbo(self, x: torch.Tensor, y: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Closed-form ELBO for q = N(mu, diag(var)), per image."""
        d = self.W.shape[0]
        resid = x.double().flatten(1) - mu @ self.W.T - self.B.T[y]
        trace = (var * (self.W**2).sum(0)).sum(1)  # tr(W diag(var) W^T)
        expected_loglik = -0.5 * d * math.log(2 * math.pi * SIGMA**2) - (resid.pow(2).sum(1) + trace) / (2 * SIGMA**2)
        kl = 0.5 * (mu.pow(2) + var - var.log() - 1).sum(1)
        return expected_loglik - kl

    def model(self, *, std_scale: float = 1.0, mu_shift: float = 0.0) -> CVAE:
        """A CVAE holding these weights; the encoder is the exact posterior unless perturbed."""
        config = ModelConfig(
            channels=D_SHAPE[0], height=D_SHAPE[1], width=D_SHAPE[2], num_classes=K_CLASSES, latent_dim=Z,
            arch="mlp", mlp_hidden=(), likelihood="gaussian", fixed_sigma=SIGMA,
        )  # fmt: skip
        model = CVAE(config)
        model.likelihood = IdentityMeanGaussian("gaussian", D_SHAPE[0], False, SIGMA)
        enc = model.encoder.net[-1]  # Linear([x, one-hot] -> 2Z)
        dec = model.decoder.net[0]  # Linear([z, one-hot] -> D)
        d = self.W.shape[0]
        std = self.S.diagonal().sqrt() * std_scale
        with torch.no_grad():
            dec.weight.copy_(torch.cat([self.W, self.B], 1))
            dec.bias.zero_()
            enc.weight.zero_()
            enc.weight[:Z, :d] = self.A
            enc.weight[:Z, d:] = -self.A @ self.B
            enc.bias.zero_()
            enc.bias[:Z] = mu_shift
            enc.bias[Z:] = torch.log(torch.expm1(std - STD_FLOOR))  # softplus^-1
        return model.eval()

    def posterior(self, x: torch.Tensor, y: torch.Tensor, std_scale: float = 1.0, mu_shift: float = 0.0):
        mu = (x.double().flatten(1) - self.B.T[y]) @ self.A.T + mu_shift
        var = (self.S.diagonal() * std_scale**2).expand_as(mu)
        return mu, var


@pytest.fixture(scope="module")
def lg() -> LinearGaussian:
    return LinearGaussian()


def test_encoder_is_the_exact_posterior(lg: LinearGaussian) -> None:
    x, y = lg.sample(50)
    post = lg.model().encode(x, y)
    mu, var = lg.posterior(x, y)
    torch.testing.assert_close(post.mu.double(), mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(post.std.double() ** 2, var, atol=1e-5, rtol=1e-5)


def test_iwae_is_exact_with_the_exact_posterior(lg: LinearGaussian) -> None:
    """Every importance weight is p(x | y): the bound is the log-likelihood for any K, per image."""
    x, y = lg.sample(200)
    exact = lg.log_px(x, y)
    model = lg.model()
    for k in (1, 20):
        # max_rows=7: K in chunks of 7, 7, 6 and one image per pass, merged by logsumexp
        for max_rows in (7, 1024):
            got = iwae_per_image(model, x, y, k=k, max_rows=max_rows).log_px
            torch.testing.assert_close(got, exact, atol=2e-4, rtol=0)


def test_elbo_matches_closed_form_and_is_exact_with_exact_posterior(lg: LinearGaussian) -> None:
    x, y = lg.sample(4000)
    exact = lg.log_px(x, y)
    for std_scale, mu_shift in ((1.0, 0.0), (1.8, 0.4)):
        model = lg.model(std_scale=std_scale, mu_shift=mu_shift)
        terms = elbo_per_image(model, x, y, batch_size=512)
        closed = lg.elbo(x, y, *lg.posterior(x, y, std_scale, mu_shift))
        diff = -terms.nelbo - closed  # one-sample noise only
        assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(x)) + 1e-5
        kl_closed = 0.5 * (lambda m, v: (m.pow(2) + v - v.log() - 1).sum(1))(*lg.posterior(x, y, std_scale, mu_shift))
        torch.testing.assert_close(terms.kl, kl_closed, atol=1e-4, rtol=1e-5)
        if std_scale == 1.0:
            torch.testing.assert_close(closed, exact, atol=1e-6, rtol=1e-9)  # exact posterior: ELBO = log p
        else:
            assert float((exact - closed).min()) > 0  # a worse q: strictly below


def test_iwae_tightens_with_k_and_approaches_the_likelihood(lg: LinearGaussian) -> None:
    x, y = lg.sample(300)
    exact_nll = float(-lg.log_px(x, y).mean())
    model = lg.model(std_scale=1.8, mu_shift=0.4)
    elbo_nll = float(-lg.elbo(x, y, *lg.posterior(x, y, 1.8, 0.4)).mean())
    nll = {k: float(-iwae_per_image(model, x, y, k=k, seed=k).log_px.mean()) for k in (1, 10, 100, 2000)}
    assert elbo_nll - exact_nll > 0.5  # a real gap to close
    assert abs(nll[1] - elbo_nll) < 0.2  # K = 1 is the ELBO (one-sample noise)
    assert nll[1] > nll[10] > nll[100] > nll[2000] > exact_nll - 0.01
    assert nll[2000] - exact_nll < 0.05 * (elbo_nll - exact_nll)


def test_inference_gap_fits_the_exact_posterior(lg: LinearGaussian) -> None:
    """A mis-set encoder: fitting q per image reaches log p(x | y) (the exact posterior is in the family)."""
    x, y = lg.sample(200)
    exact_nll = -lg.log_px(x, y)
    model = lg.model(std_scale=1.8, mu_shift=0.4)
    flags = [p.requires_grad for p in model.parameters()]
    gap = inference_gap_per_image(model, x, y, steps=300, batch_size=64)
    closed_nll = -lg.elbo(x, y, *lg.posterior(x, y, 1.8, 0.4))
    assert float((closed_nll - exact_nll).mean()) > 0.5  # a real gap to close
    assert abs(float((gap.amortized - closed_nll).mean())) < 0.05  # the encoder's ELBO, 256 draws
    assert float((gap.optimized - exact_nll).mean()) < 0.02  # fitted q: the likelihood itself
    assert float((gap.optimized - exact_nll).mean()) > -0.02  # a bound: never below (beyond the draws' noise)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training  # weights untouched
    again = inference_gap_per_image(model, x, y, steps=300, batch_size=64)
    assert torch.equal(again.optimized, gap.optimized)  # seeded: the same numbers every time
    exact_encoder = inference_gap_per_image(lg.model(), x[:50], y[:50], steps=50)
    assert abs(float((exact_encoder.amortized - exact_encoder.optimized).mean())) < 0.01  # nothing to gain


def test_refined_nelbo_closes_most_of_the_gap_and_stays_a_bound(lg: LinearGaussian) -> None:
    """A few refinement steps from a mis-set encoder's q: most of the way to log p(x | y), never past it."""
    x, y = lg.sample(2000)
    exact_nll = float(-lg.log_px(x, y).mean())
    model = lg.model(std_scale=1.8, mu_shift=0.4)
    closed_nll = float(-lg.elbo(x, y, *lg.posterior(x, y, 1.8, 0.4)).mean())
    none, few, many = (refined_nelbo(model, x, y, steps=s) for s in (0, 10, 60))
    assert abs(none - closed_nll) < 0.1  # 0 steps: the encoder's ELBO (one draw per image)
    assert closed_nll - exact_nll > 0.5  # a real gap to close
    assert few < closed_nll - 0.5 * (closed_nll - exact_nll)  # 10 steps: more than half of it
    assert many < few
    assert many > exact_nll - 0.1  # still a bound on the likelihood (one draw's noise)
    assert math.isnan(refined_nelbo(model, x[:0], y[:0], steps=5))


def test_evaluate_elbo_is_the_mean_of_elbo_per_image(lg: LinearGaussian) -> None:
    x, y = lg.sample(300)
    model = lg.model(std_scale=1.3)
    terms = elbo_per_image(model, x, y, batch_size=100)
    means = evaluate_elbo(model, x, y, batch_size=100)
    assert means["nelbo"] == pytest.approx(float(terms.nelbo.mean()), rel=1e-12)
    assert means["kl"] == pytest.approx(float(terms.kl.mean()), rel=1e-12)
    again = evaluate_elbo(model, x, y, batch_size=100)
    assert again == means  # fixed seed: same weights, same numbers


# ---------------------------------------------------------------- bits/dim


def _direct_bin_probs(mean: torch.Tensor, std: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    normal = Normal(mean.double(), std.double())
    v = torch.round(x.double() * 255)
    upper = torch.where(v == 255, torch.ones_like(v), normal.cdf((v + 0.5) / 255))
    lower = torch.where(v == 0, torch.zeros_like(v), normal.cdf((v - 0.5) / 255))
    return upper - lower


def test_discretized_gaussian_matches_normal_cdf() -> None:
    g = torch.Generator().manual_seed(0)
    n = 5000
    x = torch.randint(0, 256, (n,), generator=g).float() / 255
    x[:10], x[10:20] = 0.0, 1.0  # edge bins, extended to -inf and +inf
    mean = torch.rand(n, generator=g) * 1.4 - 0.2
    std = torch.exp(torch.empty(n).uniform_(math.log(0.005), math.log(2.0), generator=g))
    direct = _direct_bin_probs(mean, std, x)
    got = discretized_gaussian_log_prob(mean=mean, std=std, x=x)
    assert got.dtype == torch.float64
    ok = direct > 1e-12
    assert ok.sum() > n // 2
    # atol: the direct difference of CDFs near 1 cancels to ~1e-16 absolute; ours does not
    torch.testing.assert_close(got[ok].exp(), direct[ok], rtol=1e-9, atol=1e-14)
    # per image = sum over pixels, negated
    img = x.view(50, 1, 10, 10)
    nll = discretized_gaussian_nll(mean=mean.view_as(img), std=std.view_as(img), x=img)
    torch.testing.assert_close(nll, -got.view(50, -1).sum(1))


@pytest.mark.parametrize(("mean", "std"), [(0.5, 0.1), (0.0, 0.001), (1.3, 0.02), (-0.4, 5.0), (0.2, 1e-4)])
def test_discretized_bins_sum_to_one(mean: float, std: float) -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255
    logp = discretized_gaussian_log_prob(mean=torch.full((256,), mean), std=torch.full((256,), std), x=levels)
    assert torch.isfinite(logp).all()  # even bins 1000 std away keep a finite log-probability
    assert float(torch.logsumexp(logp, 0).exp()) == pytest.approx(1.0, abs=1e-12)
    assert float(discretized_gaussian_log_prob(mean=torch.tensor(mean), std=std, x=levels).logsumexp(0)) == (
        pytest.approx(0.0, abs=1e-12)
    )  # a float std works too


def test_discretized_far_tail_is_finite_and_right() -> None:
    # Phi(-999) underflows to 0 in float64; the log-CDF difference does not.
    logp = discretized_gaussian_log_prob(
        mean=torch.tensor([0.0]), std=torch.tensor([1e-3], dtype=torch.float64), x=torch.tensor([1.0])
    )
    expected = torch.special.log_ndtr(torch.tensor([-(1.0 - 0.5 / 255) / 1e-3], dtype=torch.float64))
    torch.testing.assert_close(logp, expected, rtol=1e-9, atol=0)


def test_discretized_approximates_density_times_bin_width() -> None:
    """Away from the edge bins and with sigma >> 1/255, P(bin) ~ p(x) / 255: a check through a real decoder."""
    torch.manual_seed(0)
    config = ModelConfig(channels=1, height=4, width=4, num_classes=2, latent_dim=2, arch="mlp", mlp_hidden=(8,),
                         likelihood="gaussian", fixed_sigma=0.3)  # fmt: skip
    model = CVAE(config).eval()
    x = torch.randint(1, 255, (64, 1, 4, 4)).float() / 255
    y = torch.randint(0, 2, (64,))
    terms = elbo_per_image(model, x, y, discretize=True)
    assert terms.recon_discrete is not None
    torch.testing.assert_close(terms.recon_discrete, terms.recon + 16 * math.log(255), atol=2e-3, rtol=0)
    iw = iwae_per_image(model, x, y, k=8, discretize=True)
    assert iw.log_px_discrete is not None
    torch.testing.assert_close(-iw.log_px_discrete, -iw.log_px + 16 * math.log(255), atol=2e-3, rtol=0)


def test_is_8bit() -> None:
    assert is_8bit(torch.arange(256).float() / 255)
    assert not is_8bit(torch.tensor([0.5]))
    assert not is_8bit(torch.tensor([1.5]))


# ------------------------------------------------------------ command line


def test_cli_json_on_a_run_folder(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([str(tiny_run), "--iw-samples", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["binarization"] == "static"
    assert report["test_images"] == 256 and report["dims"] == 784 and report["iw_samples"] == 20
    assert report["nelbo"] == pytest.approx(report["recon"] + report["kl"])
    assert 0 < report["iwae_nll"] < report["nelbo"]  # tighter than the ELBO, on average
    assert report["iwae_nll_se"] > 0
    assert report["bpd_kind"].startswith("binary")
    assert report["bpd_iwae"] == pytest.approx(report["iwae_nll"] / (784 * math.log(2)))


def test_cli_reports_the_inference_gap(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([str(tiny_run), "-k", "0", "--gap-images", "32", "--gap-steps", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gap_images"] == 32 and report["gap_steps"] == 30
    assert report["gap_nelbo_optimized"] < report["gap_nelbo_amortized"]  # fitting q per image only helps
    assert report["amortization_gap"] == pytest.approx(report["gap_nelbo_amortized"] - report["gap_nelbo_optimized"])
    assert cli([str(tiny_run), "-k", "0", "--gap-images", "8", "--gap-steps", "5"]) == 0
    assert "amortization gap" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli([str(tiny_run), "--gap-images", "-1"])
    assert exit_info.value.code == 2 and "--gap-images" in capsys.readouterr().err


def test_cli_reproduces_the_training_metrics(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same code, seed and precision as the trainer's per-epoch test pass: the same number."""
    last = read_jsonl(tiny_run / "metrics.jsonl")[-1]
    assert cli([str(tiny_run), "-k", "0", "--json", "--precision", "auto"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epoch"] == last["epoch"]
    assert report["nelbo"] == pytest.approx(last["test_nelbo"], abs=1e-6)
    assert report["kl"] == pytest.approx(last["test_kl"], abs=1e-6)
    assert "iwae_nll" not in report


def test_cli_table_and_subset(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tiny_run / "checkpoints" / "epoch_0002.pt"
    assert cli([str(ckpt), "-k", "5", "--test-subset", "100", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "IWAE NLL, K = 5" in out and "100 test images" in out and "binarization: static" in out


def test_cli_gaussian_reports_bits_per_dim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = main(dataset="MNIST", decoder_type="Gaussian", model_sigma=True, latent_dim=2, epochs=1, arch="mlp",
               mlp_hidden=(32,), train_subset=256, test_subset=64, latent_subset=16, run_dir=str(tmp_path / "g"),
               quiet=True).run_dir  # fmt: skip
    assert cli([str(run), "-k", "10", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["binarization"] == "none" and r["likelihood"] == "gaussian (learned sigma)"
    assert r["bpd_kind"].startswith("8-bit")
    assert r["nelbo_discrete"] > 0 and r["iwae_nll_discrete"] > 0  # probabilities, not densities
    assert r["iwae_nll_discrete"] < r["nelbo_discrete"]
    assert r["bpd_elbo"] == pytest.approx(r["nelbo_discrete"] / (784 * math.log(2)))
    assert 0 < r["bpd_iwae"] < r["bpd_elbo"]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err
    return err


def test_cli_errors_are_one_line_with_exit_code_2(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli([str(tmp_path / "missing")]) == 2
    assert "not found" in _one_line_error(capsys)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert cli([str(bad)]) == 2
    _one_line_error(capsys)
    for argv in (["-k", "-1"], ["-k", "many"], ["--test-subset", "0"], ["--precision", "fp8"]):
        with pytest.raises(SystemExit) as exc:
            cli([str(tiny_run), *argv])
        assert exc.value.code == 2, argv
        _one_line_error(capsys)


def test_module_entry_point(tiny_run: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cvae.evaluate", str(tiny_run), "-k", "2", "--test-subset", "32", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["test_images"] == 32
    proc = subprocess.run([sys.executable, "-m", "cvae.evaluate", "/nonexistent"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_the_refinements_adam_steps_as_torch_optim_adam_does() -> None:
    """PlainAdam (the per-image posterior's optimiser) gives torch.optim.Adam's numbers exactly: the same
    parameters and moments after 25 steps of gradients spread over five decades, one tensor sometimes without
    a gradient (Adam leaves it and its state alone), and it takes the gradients it used."""
    from cvae.estimators import PlainAdam

    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(37, 2, generator=gen).requires_grad_(True) for _ in range(2)]
    theirs = [t.detach().clone().requires_grad_(True) for t in ours]
    mine, reference = PlainAdam(ours, lr=0.05), torch.optim.Adam(theirs, lr=0.05)
    for step in range(25):
        scale = torch.randn(37, 2, generator=gen) * 10.0 ** (step % 5 - 2)
        for mu, raw in (ours, theirs):
            loss = (mu * scale).sin().sum() + ((raw**2 * scale).sum() if step % 7 else 0)
            loss.backward()
        mine.step()
        reference.step()
        reference.zero_grad(set_to_none=True)
        assert all(t.grad is None for t in ours)
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b)
        assert torch.equal(mine.exp_avgs[k], reference.state[b]["exp_avg"])
        assert torch.equal(mine.exp_avg_sqs[k], reference.state[b]["exp_avg_sq"])
        assert torch.equal(mine.steps[k], reference.state[b]["step"])
