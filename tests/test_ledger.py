"""The ELBO's ledger (KL per dimension, active units, the alarm) and the KL knobs (beta, warm-up, free bits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cvae.config import ModelConfig
from cvae.evaluate import cli as evaluate_cli
from cvae.ledger import ACTIVE_VARIANCE, alarm, ledger, valid_dims
from cvae.likelihoods import DiagonalGaussian
from cvae.model import CVAE
from cvae.runs import read_jsonl
from cvae.schedule import kl_weight_at
from cvae.train import cli, main

TINY = dict(dataset="MNIST", decoder_type="Bernoulli", latent_dim=4, epochs=2, batch_size=64, learning_rate=1e-3,
            arch="mlp", mlp_hidden=(64,), train_subset=512, test_subset=256, latent_subset=200, quiet=True)  # fmt: skip


def _mlp(**kw: object) -> CVAE:
    torch.manual_seed(0)
    return CVAE(ModelConfig(channels=1, height=28, width=28, num_classes=10, arch="mlp", mlp_hidden=(32,),
                            latent_dim=4, **kw))  # type: ignore[arg-type]  # fmt: skip


def test_the_kl_of_each_dimension_sums_to_the_kl() -> None:
    torch.manual_seed(1)
    q = DiagonalGaussian(torch.randn(5, 3), torch.rand(5, 3) + 0.1)
    p = DiagonalGaussian(torch.randn(5, 3), torch.rand(5, 3) + 0.1)
    for other in (None, p):
        assert torch.allclose(q.kl_dims(other).sum(-1), q.kl(other))
        assert bool((q.kl_dims(other) >= 0).all())
    # N(0, 1) against itself: nothing
    assert float(DiagonalGaussian(torch.zeros(2), torch.ones(2)).kl_dims().abs().max()) == 0


def test_active_units_count_the_dimensions_whose_mean_varies_over_the_data() -> None:
    torch.manual_seed(2)
    mu = torch.cat([torch.randn(500, 2), 0.01 * torch.randn(500, 3)], 1)  # 2 used, 3 saying the same for all
    book = ledger(torch.rand(500, 5), mu)
    assert book["active_units"] == 2
    assert [v > ACTIVE_VARIANCE for v in book["mu_variance"]] == [True, True, False, False, False]
    assert len(book["kl_dims"]) == 5


def test_the_alarm_names_a_collapse_and_a_lopsided_code_and_ignores_crafted_values() -> None:
    assert "collapse" in alarm([0.01, 0.02, 0.0], 0)
    assert "collapse" in alarm([3.0, 2.0], 0)  # nothing varies with the image, whatever the KL
    assert "z2 holds 95%" in alarm([0.25, 19.0, 0.5, 0.25], 1)
    assert alarm([4.0, 3.0, 5.0], 3) is None
    assert alarm([6.0], 1) is None  # one dimension carrying everything is what z = 1 means
    assert alarm(valid_dims("ten"), 2) is None and alarm(valid_dims([1.0, "x"]), 2) is None
    assert valid_dims([1.0, math.nan]) is None and valid_dims([]) is None and valid_dims([True]) is None
    assert alarm([4.0, 3.0], "many") is None  # a crafted count is not an alarm, nor a crash


def test_beta_and_free_bits_change_the_objective_and_never_the_elbo() -> None:
    x = (torch.rand(8, 1, 28, 28) > 0.5).float()
    y = torch.arange(8) % 10
    plain = _mlp()
    torch.manual_seed(3)
    t = plain.objective(x, y)
    assert t.kl_weight is None and "objective" not in t.terms()
    assert torch.allclose(t.loss, (t.recon + t.kl).mean())

    beta = _mlp(kl_weight=4.0)
    torch.manual_seed(3)
    b = beta.objective(x, y)
    assert torch.allclose(b.nelbo, t.nelbo)  # the same weights and noise: the same bound
    assert torch.allclose(b.loss, (b.recon + 4 * b.kl).mean())
    assert torch.allclose(b.terms()["objective"], b.recon + 4 * b.kl)

    free = _mlp(free_bits=2.0)
    torch.manual_seed(3)
    f = free.objective(x, y)
    per_dim = f.posterior.kl_dims(f.prior).mean(0)
    assert torch.allclose(f.loss, f.recon.mean() + per_dim.clamp(min=2.0).sum())
    assert float(f.loss) >= float(f.recon.mean()) + 2.0 * 4 - 1e-5  # each of the 4 dimensions costs at least 2
    # a dimension below its floor gets no gradient from the KL: only the floor is charged for it
    assert bool((per_dim < 2.0).all())  # a fresh encoder's dimensions are each far below 2 nats
    charged = f.loss - f.recon.mean()
    grads = torch.autograd.grad(charged, [p for p in free.parameters() if p.requires_grad], allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0 for g in grads)


def test_the_warm_up_raises_the_kl_weight_from_zero_to_beta() -> None:
    cfg = ModelConfig(channels=1, height=28, width=28, num_classes=10, kl_weight=2.0, kl_warmup_epochs=2.0)
    assert kl_weight_at(cfg, 1, 0, 10) == 0
    assert kl_weight_at(cfg, 1, 5, 10) == pytest.approx(0.5)  # a quarter of the way: within the first epoch
    assert kl_weight_at(cfg, 2, 5, 10) == pytest.approx(1.5)
    assert kl_weight_at(cfg, 3, 0, 10) == 2.0 and kl_weight_at(cfg, 9, 3, 10) == 2.0
    assert kl_weight_at(ModelConfig(channels=1, height=28, width=28, num_classes=10), 1, 0, 10) == 1.0


def test_a_run_logs_its_ledger_and_its_shaped_objective_beside_the_true_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = main(**TINY, run_dir=str(tmp_path / "plain"))
    shaped = main(**TINY, run_dir=str(tmp_path / "beta"), kl_weight=4.0, kl_warmup_epochs=1.0)
    rows = read_jsonl(plain.run_dir / "metrics.jsonl")
    assert all(len(r["test_kl_dims"]) == 4 and 0 <= r["test_active_units"] <= 4 for r in rows)
    assert sum(rows[-1]["test_kl_dims"]) == pytest.approx(rows[-1]["test_kl"])
    assert "train_objective" not in rows[-1] and "kl_weight" not in rows[-1]
    beta = read_jsonl(shaped.run_dir / "metrics.jsonl")
    assert [r["kl_weight"] for r in beta] == [pytest.approx(4.0 * (1 - 1 / 8)), 4.0]  # the last batch's weight
    last = beta[-1]
    # the objective with beta = 4 charges the KL four times; the -ELBO is still recon + KL
    assert last["train_objective"] == pytest.approx(last["train_recon"] + 4 * last["train_kl"], rel=1e-4)
    assert last["train_nelbo"] == pytest.approx(last["train_recon"] + last["train_kl"], rel=1e-6)

    assert evaluate_cli([str(plain.run_dir), "--iw-samples", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["kl_dims"]) == 4 and sum(report["kl_dims"]) == pytest.approx(report["kl"])
    assert isinstance(report["active_units"], int) and "kl_alarm" in report


def test_a_bad_kl_knob_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--kl-weight", "-1"], ["--free-bits", "nan"], ["--kl-warmup-epochs", "x"]):
        try:
            code = cli(["--quick-demo", "-q", "--run-dir", str(tmp_path / "r"), *flags])
        except SystemExit as exit_:  # argparse's own exit, for a value that is not a number at all
            code = exit_.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error" in err and "Traceback" not in err
        assert not (tmp_path / "r").exists()
