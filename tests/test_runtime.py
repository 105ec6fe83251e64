"""The fast training path (cvae.runtime) gives the same numbers as the plain one; the bench runs.

No timing is asserted here: speed is measured by `python -m benchmarks.bench`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvae.config import QUICK_DEMO, ModelConfig, RunConfig, conv_preset
from cvae.model import CVAE
from cvae.runtime import (
    ADAM_CHUNK,
    HalfWeights,
    half_weights,
    keep_freed_memory,
    make_optimizer,
    match_optimizer_state,
    prepare_model,
)
from cvae.train import main
from cvae.training import build_config, resolve_options

CPU = torch.device("cpu")


def reference_config(latent_dim: int = 2) -> ModelConfig:
    return ModelConfig(channels=1, height=28, width=28, num_classes=10, latent_dim=latent_dim, **conv_preset(28, 28))


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=gen) >= 0.5).float(), torch.randint(0, 10, (n,), generator=gen)


def twin_models() -> tuple[CVAE, CVAE]:
    """The same weights twice: plain contiguous, and as fit() prepares it (channels_last on CPU)."""
    torch.manual_seed(0)
    plain = CVAE(reference_config())
    fast = CVAE(reference_config())
    fast.load_state_dict(plain.state_dict())
    return plain, prepare_model(fast, CPU)


def test_prepare_model_keeps_layers_and_parameters() -> None:
    plain, fast = twin_models()
    assert fast.encoder.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in plain.parameters())
    assert [type(m) for m in fast.modules()] == [type(m) for m in plain.modules()]
    mlp = CVAE(ModelConfig(channels=1, height=28, width=28, num_classes=10, arch="mlp"))
    assert prepare_model(mlp, CPU) is mlp


def test_channels_last_gives_the_same_output() -> None:
    plain, fast = twin_models()
    x, y = batch()
    plain.eval()
    fast.eval()
    with torch.no_grad():
        zy = torch.cat([torch.randn(16, 2), plain.one_hot(y)], dim=1)
        torch.testing.assert_close(
            fast.encoder(x, plain.one_hot(y)), plain.encoder(x, plain.one_hot(y)), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(fast.decoder(zy), plain.decoder(zy), rtol=1e-4, atol=1e-4)


def _train_steps(model: CVAE, optimizer: torch.optim.Optimizer, steps: int, amp: bool = False) -> list[float]:
    losses = []
    for s in range(steps):
        x, y = batch(32, seed=s)
        torch.manual_seed(100 + s)  # the same reparameterisation noise for both contenders
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model.objective(x, y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_channels_last_gives_the_same_gradients() -> None:
    plain, fast = twin_models()
    x, y = batch(32)
    for model in (plain, fast):
        torch.manual_seed(7)  # the same reparameterisation noise
        model.objective(x, y).loss.backward()
    largest = max(p.grad.abs().max().item() for p in plain.parameters())
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        scale = p.grad.abs().max().item()
        if scale < 1e-6 * largest:
            continue  # a bias right before batch norm: its true gradient is 0, what is left is rounding
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4 * scale + 1e-7, msg=name)


def test_fused_adam_step_equals_the_default_kernel() -> None:
    """Same parameters and gradients: fused Adam (our optimizer) updates as Adam's default does."""
    plain, fast = twin_models()
    x, y = batch(32)
    torch.manual_seed(7)
    plain.objective(x, y).loss.backward()
    for p, q in zip(plain.parameters(), fast.parameters(), strict=True):
        q.grad = torch.empty_like(q).copy_(p.grad)
    plain_opt, fast_opt = torch.optim.Adam(plain.parameters(), lr=1e-3), make_optimizer(fast, 1e-3, CPU)
    assert fast_opt.defaults["fused"] is True
    for _ in range(2):
        plain_opt.step()
        fast_opt.step()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_fast_fp32_training_follows_plain_training() -> None:
    plain, fast = twin_models()
    plain_losses = _train_steps(plain, torch.optim.Adam(plain.parameters(), lr=1e-3), 3)
    fast_losses = _train_steps(fast, make_optimizer(fast, 1e-3, CPU), 3)
    # Adam's first steps turn rounding noise in near-zero gradients into whole steps, so the fast layout drifts
    # by machine-dependent amounts (up to about 0.1 nat by step 3 on some CPUs). Half a percent of the ground the
    # loss covered allows that, while a learning rate 10% off already misses by 15 nats at step 2.
    allowed = 0.005 * (plain_losses[0] - plain_losses[-1])
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), rtol=0.0, atol=allowed)


def test_bf16_fast_step_approximates_fp32() -> None:
    """The whole fast path (bf16 autocast too): losses within 1% of fp32 over a few steps."""
    plain, fast = twin_models()
    plain_losses = _train_steps(plain, torch.optim.Adam(plain.parameters(), lr=1e-4), 3)
    fast_losses = _train_steps(fast, make_optimizer(fast, 1e-4, CPU), 3, amp=True)
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), rtol=1e-2, atol=0.0)


def test_loaded_optimizer_state_takes_the_parameters_layout() -> None:
    """Adam moments saved contiguous (an older or unfused run) and loaded into channels_last parameters."""
    plain, fast = twin_models()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    _train_steps(plain, plain_opt, 2)
    fast.load_state_dict(plain.state_dict())
    fast_opt = make_optimizer(fast, 1e-3, CPU)
    fast_opt.load_state_dict(copy.deepcopy(plain_opt.state_dict()))  # as from a file: no shared tensors
    match_optimizer_state(fast_opt, True)
    for p in fast.parameters():
        for value in fast_opt.state[p].values():
            if value.shape == p.shape:
                assert value.stride() == p.stride()
    assert fast_opt.param_groups[0]["fused"] is True
    a = _train_steps(plain, plain_opt, 2)
    b = _train_steps(fast, fast_opt, 2)
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-3)


def _half_steps(model: CVAE, optimizer: torch.optim.Optimizer, weights: HalfWeights | None, steps: int,
                start: int = 0) -> list[float]:  # fmt: skip
    """`steps` training steps under bf16 autocast, as the loop takes them: with `weights` or plain."""
    losses = []
    for s in range(start, start + steps):
        x, y = batch(32, seed=s)
        torch.manual_seed(100 + s)
        with weights.for_step() if weights is not None else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model.objective(x, y).loss
            if weights is None:  # weights.step takes the gradients it used: no zero_grad with it
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step() if weights is None else weights.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kernel", ["C kernel", "torch's pieces"])
@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_half_weights_train_bit_for_bit_as_autocast_does(
    arch: str, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 weights during the step and Adam's update, by the one-pass C kernel (cvae.native) or in pieces
    of torch calls, give autocast's numbers exactly: the losses, every weight and every optimiser state, for
    the conv net (channels_last weights) and the MLP, whose widths make weights of lengths that are not a
    multiple of 16 (the kernel leaves their last elements to torch); pieces smaller than a weight so that a
    weight spans several."""
    monkeypatch.setattr("cvae.runtime.ADAM_CHUNK", 5000)
    if kernel != "C kernel":
        monkeypatch.setattr("cvae.native.adam_bf16", lambda: None)
    config = reference_config() if arch == "conv" else ModelConfig(channels=1, height=28, width=28, num_classes=10,
                                                                   latent_dim=3, arch="mlp", mlp_hidden=(63, 33))  # fmt: skip
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(prepare_model(CVAE(config), CPU))
    (plain, fast), (plain_opt, fast_opt) = models, [make_optimizer(m, 1e-3, CPU) for m in models]
    weights = half_weights(fast, fast_opt, CPU, torch.bfloat16)
    assert weights is not None and len(weights.params) >= 4
    assert (weights.kernel is not None) == (kernel == "C kernel")  # this machine builds it (tests/test_native.py)
    assert any(p.numel() % 16 for p in weights.params) == (arch == "mlp")
    assert any(p.numel() > 5000 for p in weights.params) and any(p.dim() == 4 for p in weights.params) == (
        arch == "conv"
    )
    assert _half_steps(plain, plain_opt, None, 4) == _half_steps(fast, fast_opt, weights, 4)
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b)
        assert a.grad is not None and b.grad is None  # the step took every gradient: the next starts anew
    plain_state, fast_state = plain_opt.state_dict(), fast_opt.state_dict()
    assert plain_state["param_groups"] == fast_state["param_groups"]
    for k, state in plain_state["state"].items():
        assert state.keys() == fast_state["state"][k].keys()
        assert all(torch.equal(v, fast_state["state"][k][n]) and v.dtype == fast_state["state"][k][n].dtype
                   for n, v in state.items())  # fmt: skip


def test_half_weights_resume_from_the_fp32_weights_a_checkpoint_holds() -> None:
    """A checkpoint of a HalfWeights run loads into a plain run and back; refresh() takes loaded weights."""
    torch.manual_seed(0)
    first = prepare_model(CVAE(reference_config()), CPU)
    first_opt = make_optimizer(first, 1e-3, CPU)
    weights = half_weights(first, first_opt, CPU, torch.bfloat16)
    _half_steps(first, first_opt, weights, 2)
    saved = copy.deepcopy({"model": first.state_dict(), "optimizer": first_opt.state_dict()})
    assert all(v.dtype == torch.float32 for v in saved["model"].values() if v.is_floating_point())
    plain = prepare_model(CVAE(reference_config()), CPU)
    plain_opt = make_optimizer(plain, 1e-3, CPU)
    plain.load_state_dict(saved["model"])
    plain_opt.load_state_dict(copy.deepcopy(saved["optimizer"]))
    match_optimizer_state(plain_opt, True)
    second = prepare_model(CVAE(reference_config()), CPU)
    second_opt = make_optimizer(second, 1e-3, CPU)
    resumed = half_weights(second, second_opt, CPU, torch.bfloat16)
    second.load_state_dict(saved["model"])
    second_opt.load_state_dict(copy.deepcopy(saved["optimizer"]))
    match_optimizer_state(second_opt, True)
    resumed.refresh()
    assert _half_steps(plain, plain_opt, None, 2, start=2) == _half_steps(second, second_opt, resumed, 2, start=2)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), second.parameters(), strict=True))


def test_half_weights_only_where_they_give_autocasts_numbers() -> None:
    torch.manual_seed(0)
    model = CVAE(reference_config())
    fused = make_optimizer(model, 1e-3, CPU)
    assert half_weights(model, fused, CPU, None) is None  # fp32: nothing to cast
    assert half_weights(model, torch.optim.Adam(model.parameters(), lr=1e-3), CPU, torch.bfloat16) is None
    assert half_weights(model, torch.optim.SGD(model.parameters(), lr=1e-3), CPU, torch.bfloat16) is None
    assert half_weights(model, fused, torch.device("meta"), torch.bfloat16) is None
    assert ADAM_CHUNK >= 1 << 14


def test_flush_denormals_zeroes_denormal_floats() -> None:
    from cvae.runtime import flush_denormals

    torch.set_flush_denormal(False)  # an earlier in-process fit() may have turned it on
    tiny = torch.tensor([1e-39, 1e-30])  # a denormal and a normal float32
    assert (tiny * 1.0)[0] > 0
    try:
        assert flush_denormals()  # x86 and ARM CPUs have the mode
        assert (tiny * 1.0).tolist() == [0.0, pytest.approx(1e-30)]
    finally:
        torch.set_flush_denormal(False)


def test_main_flushes_denormals_in_the_worker_threads_too(tmp_path: Path) -> None:
    """main() sets flush-to-zero before torch starts its worker threads, so they inherit it.

    Set afterwards (as fit() alone did), the main thread flushes and the other
    half of a two-thread operation does not.
    """
    script = f"""
import torch
from cvae.train import main
main(dataset="MNIST", arch="mlp", mlp_hidden=(16,), latent_dim=2, epochs=1, train_subset=64, test_subset=32,
     latent_subset=8, threads=2, run_dir={str(tmp_path / "run")!r}, quiet=True)
torch.set_num_threads(2)
y = torch.full((1_000_000,), 1e-20) * 1e-20  # 1e-40: denormal; split between the threads
print(float((y != 0).float().mean()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) == 0.0


def test_keep_freed_memory_is_harmless() -> None:
    assert keep_freed_memory() in (True, False)
    assert keep_freed_memory() == sys.platform.startswith("linux")


def test_conv_resume_is_exact(tmp_path: Path) -> None:
    """The fast path keeps exact resume: 2 epochs == 1 epoch + resume 1 epoch."""
    common = dict(dataset="MNIST", decoder_type="Bernoulli", latent_dim=2, batch_size=32, learning_rate=1e-3,
                  arch="conv", train_subset=96, test_subset=64, latent_subset=16, threads=1, quiet=True)  # fmt: skip
    straight = main(**common, epochs=2, run_dir=str(tmp_path / "straight"))  # one thread: the same sums at any load
    main(**common, epochs=1, run_dir=str(tmp_path / "split"))
    resumed = main(**{**common, "epochs": 1}, resume_path=str(tmp_path / "split"))
    a = torch.load(straight.run_dir / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert straight.metrics[-1]["test_nelbo"] == resumed.metrics[-1]["test_nelbo"]


def test_quick_demo_preset_validates_and_trains(tmp_path: Path) -> None:
    from cvae.data import DatasetInfo

    info = DatasetInfo("MNIST", 1, 28, 28, tuple(str(d) for d in range(10)))
    for z in (2, 10):
        options = resolve_options({"quick_demo": True, "latent_dim": z})
        config = build_config(options, info)
        assert config.model.arch == "mlp" and config.model.latent_dim == z
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    result = main(**{**QUICK_DEMO, "epochs": 1}, train_subset=512, test_subset=128, latent_subset=32,
                  run_dir=str(tmp_path / "demo"), quiet=True)  # fmt: skip
    assert len(result.metrics) == 1 and torch.isfinite(torch.tensor(result.metrics[0]["test_nelbo"]))
    last = result.metrics[-1]
    assert last["refine_steps"] == QUICK_DEMO["refine_steps"] > 0
    assert last["test_nelbo_refined"] < last["test_nelbo"]  # refining q per image only tightens the bound


def test_refined_test_elbo_on_the_last_epoch_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cvae.train import cli

    common = ["-d", "MNIST", "--arch", "mlp", "-z", "2", "-b", "32", "--train-subset", "128", "--test-subset",
              "64", "--latent-subset", "8"]  # fmt: skip
    assert cli([*common, "-e", "2", "--refine-steps", "5", "--run-dir", str(tmp_path / "run")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "test_nelbo_refined" not in metrics[0]  # it costs time: the final model only
    assert metrics[1]["refine_steps"] == 5 and math.isfinite(metrics[1]["test_nelbo_refined"])
    out = capsys.readouterr().out
    assert "with q refined per image by 5 steps" in out.splitlines()[-1]
    # resumed with more epochs and without refinement: the saved setting is kept unless given
    assert cli(["-rp", str(tmp_path / "run"), "-e", "1", "--refine-steps", "0"]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and "test_nelbo_refined" not in metrics[2]
    for bad in ("-1", "x", "20000"):
        try:
            code = cli([*common, "-e", "1", "--refine-steps", bad, "--run-dir", str(tmp_path / f"bad{bad}")])
        except SystemExit as exit_info:  # argparse's own errors
            code = exit_info.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refine" in err


@pytest.mark.slow
def test_bench_runs_quickly(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--only", "ceiling,speed", "--batches", "2", "--warmup", "1",
         "--rounds", "1", "--json", str(out)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "speed-up, same run" in proc.stdout
    assert report["ceiling"]["bf16_gflops"] > 0 and report["ceiling"]["fp32_gflops"] > 0
    assert report["speed"]["baseline_images_per_s"] > 0 and report["speed"]["ours_images_per_s"] > 0
    assert 170e6 < report["flops_per_image"] < 190e6  # REFERENCE.md: 178.6 MFLOP per image
    assert report["speed"]["ours_peak_rss_mb"] < 2048


def test_new_config_fields_are_validated_and_round_trip() -> None:
    from cvae.config import DataConfig, TrainConfig
    from cvae.errors import ConfigError

    base = dict(channels=1, height=28, width=28, num_classes=10, arch="mlp")
    model = ModelConfig(**base, mlp_activation="silu", mlp_norm="layer")
    run = RunConfig(
        data=DataConfig(binarize="static"), model=model, train=TrainConfig(lr_schedule="exponential", lr_decay=0.9)
    ).validate()
    assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    net = CVAE(model)
    assert any(isinstance(m, torch.nn.SiLU) for m in net.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in net.modules())
    for bad in (dict(mlp_activation="swish"), dict(mlp_norm="group")):
        with pytest.raises(ConfigError):
            ModelConfig(**base, **bad).validate()
    for decay in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError):
            TrainConfig(lr_decay=decay).validate()
    cosine = RunConfig(
        data=DataConfig(binarize="static"), model=model, train=TrainConfig(lr_schedule="cosine", warmup_epochs=1.5)
    ).validate()
    assert RunConfig.from_dict(json.loads(json.dumps(cosine.to_dict()))) == cosine
    for bad in (dict(lr_schedule="step"), dict(warmup_epochs=-1), dict(warmup_epochs=float("nan")),
                dict(warmup_epochs=1), dict(lr_schedule="cosine", lr_decay=0.9)):  # fmt: skip
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()


def test_bench_table_shows_the_demo_with_and_without_refinement() -> None:
    from benchmarks.bench import format_table

    demo = dict(epochs=13, train_seconds=55.2, seconds_with_loading=57.0, first_pictures_s=1.84, test_nelbo=121.3,
                refine_steps=10, test_nelbo_refined=119.4)  # fmt: skip
    machine = dict(cpu="test CPU", cores=2, torch="2", date="today")
    z10 = {**demo, "refine_steps": 0, "test_nelbo_refined": None, "first_pictures_s": None}
    table = format_table({"machine": machine, "demo": {"z2": demo, "z10": z10}})
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert "121.30 nats (119.40 with q refined by 10 steps) after 13 epochs, 55 s" in rows["quick demo z=2"]
    assert "57 s in all, first pictures after 1.8 s" in rows["quick demo z=2"]
    assert "refined" not in rows["quick demo z=10"] and "first pictures" not in rows["quick demo z=10"]


def test_bench_reports_each_speed_as_a_share_of_the_ceiling_and_of_the_roofline() -> None:
    from benchmarks.bench import STEP_BYTES_PER_PARAMETER, _add_ceiling_fraction, format_table

    report = {"ceiling": {"fp32_gflops": 400.0, "bf16_gflops": 2000.0, "memory_gbps": 10.0, "precision": "bf16",
                          "bf16_native": True, "bf16_size": 2048},
              "flops_per_image": 178.6e6, "parameters": 15_000_000}  # fmt: skip
    memory_bound = 10e9 * 64 / (15_000_000 * STEP_BYTES_PER_PARAMETER["bf16"])  # 1255 images/s; compute: 11198
    speed = {"ours_images_per_s": 1000.0}
    _add_ceiling_fraction(report, speed, "ours_images_per_s")
    assert speed["roofline_bound"] == "memory"
    assert speed["roofline_images_per_s"] == pytest.approx(memory_bound)
    assert speed["fraction_of_roofline"] == pytest.approx(1000 / memory_bound)
    assert speed["fraction_of_ceiling"] == pytest.approx(1000 * 178.6e6 / 2000e9)
    report["ceiling"]["memory_gbps"] = 1000.0  # a memory so fast that the matrix units bound the step
    _add_ceiling_fraction(report, speed, "ours_images_per_s")
    assert speed["roofline_bound"] == "compute" and speed["roofline_images_per_s"] == pytest.approx(2000e9 / 178.6e6)
    base = {"images_per_s": 300.0}
    _add_ceiling_fraction(report, base, "images_per_s")
    speed.update(baseline_images_per_s=300.0, speedup=3.33, speedup_per_round=[3.33], ours_seconds_per_epoch=60,
                 baseline_peak_rss_mb=1, ours_peak_rss_mb=1, baseline=base)  # fmt: skip
    table = format_table({"machine": dict(cpu="c", cores=2, torch="2", date="d"), **report, "speed": speed})
    rows = {line.split("  ")[0]: line.split("  ")[-1].strip() for line in table.splitlines()}
    assert rows["memory bandwidth (a + b into c)"] == "1000.0 GB/s over the model's size"
    assert rows["ours, share of the roofline"] == "9% of 11198 images/s (compute-bound)"
    assert rows["baseline, share of the bf16 ceiling / roofline"] == "3% / 3%"


def test_bench_takes_each_share_of_the_better_of_its_two_ceilings() -> None:
    from benchmarks.bench import _add_fractions, best_ceiling, format_table

    # A ceiling caught in a slow minute at the start (343 against 410 GFLOP/s at the end) must not flatter the
    # shares: each figure is the better of the two measurements, the products' replay the shorter.
    start = {"fp32_gflops": 129.0, "bf16_gflops": 343.0, "memory_gbps": 43.5, "precision": "bf16",
             "bf16_native": True, "bf16_size": 2048, "core_to_core_ns": 183.0,
             "products_seconds": 0.0453, "products_flops": 11.43e9, "products_calls": 22}  # fmt: skip
    end = {**start, "fp32_gflops": 150.0, "bf16_gflops": 410.0, "memory_gbps": 40.0, "core_to_core_ns": 45.0,
           "products_seconds": 0.0380}  # fmt: skip
    ceiling = best_ceiling(start, end)
    assert (ceiling["fp32_gflops"], ceiling["bf16_gflops"], ceiling["memory_gbps"]) == (150.0, 410.0, 43.5)
    assert ceiling["products_seconds"] == 0.0380 and ceiling["core_to_core_ns"] == 183.0
    assert ceiling["core_to_core_ns_end"] == 45.0 and ceiling["measured"] == {"start": start, "end": end}
    assert start["bf16_gflops"] == 343.0  # the measurements themselves are kept as they were
    speed = {"ours_images_per_s": 1000.0, "baseline_images_per_s": 348.0, "speedup": 2.87,
             "speedup_per_round": [2.87], "ours_seconds_per_epoch": 60, "baseline_peak_rss_mb": 1,
             "ours_peak_rss_mb": 1, "baseline": {"images_per_s": 348.0}}  # fmt: skip
    report = {"machine": dict(cpu="c", cores=2, torch="2", date="d"), "ceiling": ceiling,
              "flops_per_image": 178.6e6, "parameters": 15_000_000, "speed": speed}  # fmt: skip
    _add_fractions(report)
    assert speed["fraction_of_ceiling"] == pytest.approx(1000 * 178.6e6 / 410e9)  # 44 %, not the 52 % of 343
    assert speed["fraction_of_products"] == pytest.approx(1000 * 0.0380 / 64)
    assert speed["baseline"]["fraction_of_ceiling"] == pytest.approx(348 * 178.6e6 / 410e9)
    rows = {line.split("  ")[0]: line.split("  ")[-1].strip() for line in format_table(report).splitlines()}
    assert rows["matmul ceiling fp32 / bf16"] == ("150 / 410 GFLOP/s, the better of the start's 129 / 343 and "
                                                  "the end's 150 / 410")  # fmt: skip
    assert rows["memory bandwidth (a + b into c)"] == "43.5 GB/s over the model's size (start 43.5, end 40.0)"
    assert rows["core-to-core latency, first two CPUs"].startswith("183 ns one way; 45 ns at the end")
    assert rows["ours: the step's products alone"].endswith("(the shorter of the start's 45.3 and the end's 38.0 ms)")
    assert rows["ours, share of the bf16 ceiling"] == "44% (179 GFLOP/s)"


def test_bench_measures_a_cpu_without_bf16_instructions_against_its_fp32_ceiling() -> None:
    from benchmarks.bench import STEP_BYTES_PER_PARAMETER, _add_ceiling_fraction, format_table

    # Such a CPU multiplies bf16 matrices with a plain loop: its bf16 figure would flatter any fp32 loop.
    report = {"ceiling": {"fp32_gflops": 80.0, "bf16_gflops": 1.2, "memory_gbps": 40.0, "precision": "fp32",
                          "bf16_native": False, "bf16_size": 512},
              "flops_per_image": 178.6e6, "parameters": 15_000_000}  # fmt: skip
    speed = {"ours_images_per_s": 300.0}
    _add_ceiling_fraction(report, speed, "ours_images_per_s")
    assert speed["ceiling_precision"] == "fp32"
    assert speed["fraction_of_ceiling"] == pytest.approx(300 * 178.6e6 / 80e9)
    by_memory = 40e9 * 64 / (15_000_000 * STEP_BYTES_PER_PARAMETER["fp32"])
    assert STEP_BYTES_PER_PARAMETER["fp32"] > STEP_BYTES_PER_PARAMETER["bf16"]
    assert speed["roofline_images_per_s"] == pytest.approx(min(by_memory, 80e9 / 178.6e6))
    speed.update(baseline_images_per_s=150.0, speedup=2.0, speedup_per_round=[2.0], ours_seconds_per_epoch=200,
                 baseline_peak_rss_mb=1, ours_peak_rss_mb=1)  # fmt: skip
    machine = dict(cpu="AMD EPYC", cores=2, torch="2", date="d", vector_instructions="AVX2",
                   bf16_matrix_instructions=False)  # fmt: skip
    rows = {line.split("  ")[0]: line.split("  ")[-1].strip()
            for line in format_table({"machine": machine, **report, "speed": speed}).splitlines()}  # fmt: skip
    assert rows["ours, share of the fp32 ceiling"] == "67% (54 GFLOP/s)"
    assert rows["matmul ceiling fp32 / bf16"].startswith("80 / 1.2 GFLOP/s (no bf16 matrix instructions: 512 x 512")
    assert rows["ours trains in"].startswith("fp32")
    assert rows["machine"].startswith("AMD EPYC (AVX2), 2 cores")


def test_bench_gpu_table_reports_the_demo_breakdown_the_queue_and_torch_compile() -> None:
    from benchmarks.bench import format_cuda_table

    machine = dict(cpu="test CPU", cores=16, torch="2", date="today", gpu="Test GPU")
    graph = dict(cuda_graph=True, warning="", precision="float32", graph_setup_seconds=0.5,
                 epoch_train_seconds=[5.0, 0.9], epoch_seconds_with_eval=[5.1, 1.0], test_nelbo=[144.3, 140.0])  # fmt: skip
    demo = dict(cuda_graph=True, graph_setup_seconds=0.4, warning="", epochs=12, train_seconds=2.6,
                optimisation_seconds=2.3, refine_seconds=0.1, per_epoch_rest_seconds=0.0167, seconds_with_loading=7.0,
                test_nelbo=121.3, test_nelbo_refined=119.3, gpu_memory_mb=410.0)  # fmt: skip
    queue = dict(count=10, seconds_until_last=30.0, devices=["cuda:0"] * 10, cuda_graph=[True] * 10,
                 train_seconds=[20.0, 22.0], test_nelbo=[121.3, 121.3], gpu_memory_used_mb=6000.0,
                 gpu_memory_per_run_mb=600.0)  # fmt: skip
    compiled = dict(epoch_train_seconds=[60.0, 1.8], test_nelbo=[144.4])
    report = {"machine": machine, "graph_fp32": graph, "demo_graph": demo, "queue": queue, "compile": compiled,
              "errors": {"eager_fp32": "RuntimeError: bench worker failed\nout of memory"}}  # fmt: skip
    rows = {line.split("  ")[0]: line for line in format_cuda_table(report).splitlines()}
    assert (
        "optimisation 2.30 s, test pass and pictures 17 ms/epoch, refinement 0.10 s"
        in rows["quick demo, graph (cuda_graph=True)"]
    )
    assert "GPU memory peak 410 MiB" in rows["quick demo, graph (cuda_graph=True)"]
    assert "last finished after 30.0 s" in rows["10 quick demos at once through the queue, one GPU"]
    assert "['cuda:0']" in rows["10 quick demos at once through the queue, one GPU"]
    assert "600 MiB per run" in rows["10 quick demos at once through the queue, one GPU"]
    assert rows["speed-up, CUDA graph vs torch.compile (epoch 2)"].endswith("2.00x")
    assert rows["eager_fp32: failed"].endswith("out of memory")


def test_bench_baseline_reads_mnist_as_the_reference_does() -> None:
    """torchvision's own MNIST class over the shipped files, thresholded per image: the same images and labels,
    in the same order, as our statically binarized MNIST."""
    from benchmarks.bench import baseline_loader
    from cvae.config import DataConfig
    from cvae.data import load_data

    ours = load_data(DataConfig(dataset="MNIST", binarize="static"))
    x, y = next(iter(baseline_loader(train=False)))  # the test loader is not shuffled
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, ours.test_x[:64]) and torch.equal(y, ours.test_y[:64])
    train = baseline_loader(train=True)
    assert len(train.dataset) == 60_000 and len(train) == 938


def test_bench_baseline_trains_the_quick_demos_model_when_asked() -> None:
    """The reference's loop on the quick demo's MLP, at its batch size: the baseline beside the demo's steps."""
    from benchmarks.bench import demo_config, reference_parameters, run_baseline

    config = demo_config(10)
    demo = run_baseline(2, 1, demo_latent=10)
    assert demo["batch_size"] == 128 and demo["images_per_s"] > 0
    assert demo["parameters"] == sum(p.numel() for p in CVAE(config.model).parameters()) < reference_parameters()


def test_bench_reference_step_is_the_negative_elbo_where_no_pixel_saturates() -> None:
    """The reference's loss (sigmoid, then summed BCE and KL over the batch, / batch) is our -ELBO in nats
    while the decoder's probabilities stay off 0 and 1; it then trains the model (a step changes the weights)."""
    from benchmarks.bench import reference_step

    torch.manual_seed(0)
    model = CVAE(reference_config())
    with torch.no_grad():
        model.decoder.net[-1].weight.mul_(0.01)  # logits near 0: sigmoid is exact, the BCE's log clamp never bites
    x = (torch.rand(16, 1, 28, 28) >= 0.5).float()
    y = torch.arange(16) % 10
    torch.manual_seed(1)
    ours = model.objective(x, y).loss.item()
    before = model.encoder.net[0].weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(1)
    theirs = reference_step(model, optimizer, x, y).item()
    assert theirs == pytest.approx(ours, rel=1e-5)
    assert not torch.equal(before, model.encoder.net[0].weight)


def test_bench_replays_every_matrix_product_of_our_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.bench import BATCH, _add_products_fraction, flops_per_image, format_table, measure_products

    # A product the recording missed (a custom backward's, say) would make the bound too fast to be one; and
    # a CPU without bf16 instructions trains in fp32, through torch's own layers, which must be counted too.
    products = measure_products(repeats=1)
    assert products["products_flops"] == pytest.approx(flops_per_image() * BATCH, rel=1e-6)
    assert products["products_calls"] >= 12 and products["products_seconds"] > 0
    for where in ("cvae.runtime.cpu_has_fast_bf16", "cvae.layers.cpu_has_fast_bf16"):
        monkeypatch.setattr(where, lambda: False)
    fp32 = measure_products(repeats=1)
    assert fp32["products_precision"] == "fp32" and fp32["products_calls"] >= 12
    assert fp32["products_flops"] == products["products_flops"]
    report = {"ceiling": {"fp32_gflops": 100.0, "bf16_gflops": 400.0, "precision": "bf16", "bf16_native": True,
                          "bf16_size": 2048, "products_seconds": 0.04, "products_calls": 22,
                          "products_flops": 11.43e9}}  # fmt: skip
    speed = {"ours_images_per_s": 800.0, "baseline_images_per_s": 300.0, "speedup": 2.7, "speedup_per_round": [2.7],
             "ours_seconds_per_epoch": 75, "baseline_peak_rss_mb": 1, "ours_peak_rss_mb": 1}  # fmt: skip
    _add_products_fraction(report, speed, "ours_images_per_s")
    assert speed["products_images_per_s"] == pytest.approx(BATCH / 0.04)
    assert speed["fraction_of_products"] == pytest.approx(800 / 1600)
    rows = {line.split("  ")[0]: line.split("  ")[-1].strip()
            for line in format_table({"machine": dict(cpu="c", cores=2, torch="2", date="d"), **report,
                                      "speed": speed}).splitlines()}  # fmt: skip
    assert rows["ours: the step's products alone"] == "40.0 ms a step (22 replayed) = 1600 images/s, 71% of the ceiling"
    assert rows["ours, share of its products' speed"] == "50%"


def test_placement_times_the_step_beside_the_cpus_core_to_core_latency() -> None:
    # Two CPUs and a C compiler, as CI has: the latency must be measured, not left out, for the seconds to be
    # grouped by placement at all.
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "benchmarks.placement", "--seconds", "2"], capture_output=True,
                          text=True, cwd=root, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    seconds = [line for line in lines if " | " in line and line[0].isdigit()]
    assert len(seconds) >= 1
    latency, step = seconds[0].split(" | ")
    assert float(latency) > 0 and float(step.split(":")[0]) > 0
    assert lines[-2].startswith("near (") and f"of {len(seconds)} seconds" in lines[-2]
    bad = subprocess.run([sys.executable, "-m", "benchmarks.placement", "--seconds", "0"], capture_output=True,
                         text=True, cwd=root, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--seconds" in bad.stderr


def test_the_fused_adam_benchmark_checks_its_numbers_before_timing_them() -> None:
    # On a CPU with avx512_bf16 every fused form must give the loop's two passes' numbers bit for bit (its
    # timings are evidence only if they compute the same step); elsewhere it says why not in one line.
    from benchmarks.kernels import has_avx512_bf16
    from cvae import native

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fused_adam", "--rounds", "1", "--calls", "1"],
                          capture_output=True, text=True, cwd=root, timeout=300)  # fmt: skip
    if has_avx512_bf16() and native.adam_bf16() is not None:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.count("bit for bit") == 10 and "DIFFERENT" not in proc.stdout, proc.stdout
    else:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    bad = subprocess.run([sys.executable, "-m", "benchmarks.fused_adam", "--calls", "0"], capture_output=True,
                         text=True, cwd=root, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --rounds and --calls must be positive"


def test_placement_groups_the_seconds_where_the_latency_jumps() -> None:
    from benchmarks.placement import summary

    near, far = (50.0, 5.0, 2.0, 2.2, 0.8), (190.0, 7.5, 2.5, 3.0, 2.0)
    lines = [near, far, (60.0, 5.2, 2.0, 2.3, 0.9), (180.0, 7.6, 2.6, 3.0, 2.0), (55.0, 5.1, 2.0, 2.2, 0.9)]
    first, second = summary(lines)
    assert first == "near (50-60 ns): 3 of 5 seconds, step 5.10 ms (forward 2.00, backward 2.20, optimiser 0.90)"
    assert second.startswith("far (180-190 ns): 2 of 5 seconds, step 7.55 ms") and "1.48x the near" in second
    # latencies that drift without a jump are one placement
    assert summary([near, (80.0, 5.2, 2.0, 2.3, 0.9)])[1] == "far: no second (one placement throughout)"
    assert "not measured" in summary([(math.nan, 5.0, 2.0, 2.2, 0.8)])[0]


def test_bench_reports_the_quick_demos_steps_as_a_share_of_the_ceiling_beside_the_references_loop() -> None:
    from benchmarks.bench import _add_ceiling_fraction, demo_config, flops_per_image, format_table

    config = demo_config(2)
    assert (config.model.arch, config.model.mlp_hidden, config.train.batch_size) == ("mlp", (384, 384), 128)
    flops = flops_per_image(config.train.batch_size, config.model)
    # two 384-wide layers each side: that many multiply-adds forward, as many for the weights' gradients, and
    # as many for the inputs' gradients but the encoder's first layer's (the image needs none)
    macs = 794 * 384 + 384 * 384 + 384 * 4 + 12 * 384 + 384 * 384 + 384 * 784
    assert flops == 2 * (3 * macs - 794 * 384)
    report = {"machine": dict(cpu="c", cores=2, torch="2", date="d"),
              "ceiling": {"fp32_gflops": 100.0, "bf16_gflops": 400.0, "memory_gbps": 40.0, "precision": "bf16"},
              "flops_per_image": 178.6e6, "parameters": 15_000_000}  # fmt: skip
    demo = dict(epochs=12, train_seconds=30.0, seconds_with_loading=32.0, test_nelbo=121.2,
                training_images_per_s=20_000.0, train_images=60_000, flops_per_image=flops, parameters=914_000,
                batch_size=128, baseline={"images_per_s": 5_000.0}, speedup=4.0)  # fmt: skip
    model = {k: demo[k] for k in ("flops_per_image", "parameters", "batch_size")}
    _add_ceiling_fraction(report, demo, "training_images_per_s", **model)
    _add_ceiling_fraction(report, demo["baseline"], "images_per_s", **model)
    assert demo["fraction_of_ceiling"] == pytest.approx(20_000 * flops / 400e9)  # the demo's FLOPs, not the conv's
    assert demo["roofline_bound"] == "compute"  # 0.9 M parameters at batch 128: the memory is no bound
    rows = {line.split("  ")[0]: line.split("  ")[-1].strip() for line in format_table({**report, "demo": {"z2": demo}}).splitlines()}  # fmt: skip
    share = f"{100 * 20_000 * flops / 400e9:.0f}%"
    assert rows["quick demo z=2: its steps"] == (
        f"ours 20000 images/s ({share} of the bf16 ceiling), the reference's loop on its model 5000 "
        f"({100 * 5_000 * flops / 400e9:.0f}% of the bf16 ceiling): 4.00x; its 12 epochs' steps in the reference's "
        "loop: 144 s"
    )


def test_bench_table_says_the_cpus_core_to_core_latency() -> None:
    from benchmarks.bench import format_table

    machine = dict(cpu="c", cores=2, torch="2", date="d")
    ceiling = {"fp32_gflops": 100.0, "bf16_gflops": 400.0, "precision": "bf16", "core_to_core_ns": 187.4}
    demo = dict(
        epochs=12, train_seconds=44.0, seconds_with_loading=48.0, test_nelbo=121.4, core_to_core_ns=[52.0, 190.2]
    )
    rows = {line.split("  ")[0]: line for line in
            format_table({"machine": machine, "ceiling": ceiling, "demo": {"z2": demo}}).splitlines()}  # fmt: skip
    assert "187 ns one way" in rows["core-to-core latency, first two CPUs"]
    assert rows["quick demo z=2"].endswith("48 s in all, core-to-core 52 / 190 ns before / after")


@pytest.mark.parametrize(("shape", "nrow", "padding"), [
    ((5, 1, 28, 28), 3, 2), ((16, 3, 32, 32), 8, 1), ((64, 1, 28, 28), 8, 0), ((3, 1, 7, 5), 8, 2),
    ((1, 1, 28, 28), 1, 2), ((1, 3, 9, 9), 8, 2), ((28, 28), 8, 2), ((3, 9, 9), 8, 2),
])  # fmt: skip
def test_grid_pixels_lays_images_out_as_torchvision_does(shape: tuple[int, ...], nrow: int, padding: int) -> None:
    from torchvision.utils import make_grid

    from cvae.artifacts import grid_pixels

    images = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1  # some outside [0, 1]
    theirs = make_grid(images.clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    expected = theirs.mul(255).round().byte().permute(1, 2, 0).numpy()
    ours = grid_pixels(images, nrow=nrow, padding=padding)
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    assert (ours == expected).all()


def test_a_training_run_imports_no_compiler_and_a_compiler_still_skips_the_optimizer(tmp_path: Path) -> None:
    """The optimizer's methods run without importing torch._dynamo (a second at each training process's start);
    once it is imported, torch.compile treats them exactly as with torch's own wrappers: not traced."""
    script = """
import sys, torch
from cvae import runtime
if sys.argv[1] == "plain":  # torch's own wrappers, for comparison
    runtime.import_dynamo_when_needed = lambda: 0
from cvae.train import main
main(dataset="MNIST", arch="mlp", mlp_hidden=(16,), latent_dim=2, epochs=2, train_subset=64, test_subset=32,
     latent_subset=8, refine_steps=2, run_dir=sys.argv[2], quiet=True)
print("imported" if "torch._dynamo" in sys.modules else "not imported")
from cvae.runtime import make_optimizer
weight = torch.nn.Parameter(torch.ones(3))
opt = make_optimizer(torch.nn.Linear(3, 1), 1e-3, torch.device("cpu"))
def step(x):
    y = (x * weight).sum()
    opt.zero_grad()
    return y * 2
import torch._dynamo
explained = torch._dynamo.explain(step)(torch.ones(3))
print(explained.graph_count, explained.graph_break_count, float(torch.compile(step, backend="eager")(torch.ones(3))))
"""
    outputs = {}
    for mode in ("ours", "plain"):
        out = subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / mode)], capture_output=True, text=True,
                             cwd=Path(__file__).parents[1])  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        outputs[mode] = out.stdout.strip().splitlines()[-2:]
    assert outputs["ours"][0] == "not imported"
    assert outputs["ours"][1] == outputs["plain"][1]  # the same graphs and breaks: zero_grad is not traced
    assert outputs["ours"][1].split()[1] != "0"


def test_the_thin_products_benchmark_checks_its_numbers_before_timing_them() -> None:
    # Its timings compare like with like only if the kernels compute the step's products: the weight's gradient
    # bit for bit, the long products within one bf16 rounding of the exact product; elsewhere one line says why.
    from benchmarks.kernels import compiler, has_avx512_bf16

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "benchmarks.thin_products", "--rounds", "1", "--calls", "1"],
                          capture_output=True, text=True, cwd=root, timeout=300)  # fmt: skip
    if has_avx512_bf16() and compiler():
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.count("ours bit for bit") == 2, proc.stdout
        assert proc.stdout.count("ours within a bf16 rounding") == 4, proc.stdout
        lines = proc.stdout.splitlines()
        for state in ("warm", "cold"):
            assert sum(line.startswith(f"    {state}: oneDNN") for line in lines) == 6, proc.stdout
            assert any(line.startswith(f"all six, {state}: oneDNN") for line in lines), proc.stdout
    else:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    bad = subprocess.run([sys.executable, "-m", "benchmarks.thin_products", "--rounds", "0"], capture_output=True,
                         text=True, cwd=root, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --rounds and --calls must be positive"


def test_epoch_steps_reads_each_epochs_step_time_from_a_real_run(tiny_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from benchmarks.epoch_steps import epoch_steps, main
    from cvae.runs import RunDir

    run = RunDir(tiny_run)
    batches = run.read_batches()
    steps = epoch_steps(batches)
    assert sorted(steps) == [1, 2]  # 512 images at batch 64: 8 logged batches, 7 gaps, an epoch
    assert all(len(v) == 7 and min(v) > 0 for v in steps.values())
    first = [b for b in batches if b["epoch"] == 1]
    assert sum(steps[1]) == pytest.approx(first[-1]["time"] - first[0]["time"])  # the gaps add up to the epoch
    assert main([str(tiny_run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["epoch", "median", "step"] and [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert main([str(tmp_path)]) == 2 and "no batches.jsonl" in capsys.readouterr().err  # not a run: one line
    (tmp_path / "batches.jsonl").write_text(
        '{"epoch": 1, "step": 1, "time": "x"}\n{"epoch": 1, "step": 2, "time": 1}\n'
    )
    assert main([str(tmp_path)]) == 2 and capsys.readouterr().err.startswith("error:")  # a crafted file: one line
