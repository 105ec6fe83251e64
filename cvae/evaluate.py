"""Test-set metrics in nats: the negative ELBO (reconstruction + KL), the
importance-weighted bound, and bits per dimension.

    python -m cvae.evaluate checkpoints/<run>                 # a table
    python -m cvae.evaluate checkpoints/<run> --json -k 1000  # JSON, tighter bound
    python -m cvae.evaluate checkpoints/<run> --gap-images 1000  # and how much the encoder loses

The training loop's per-epoch test numbers come from `cvae.estimators.evaluate_elbo`, which
is `cvae.estimators.elbo_per_image` averaged, so a run's metrics and this
command agree by construction (same seed, same single z sample per image).

Every figure is a mean over the images, with its standard error, of one of
`cvae.estimators`' per-image estimators (their definitions are there): the
negative ELBO (one z ~ q, the KL analytic), the IWAE bound (reported as its
negative, an upper bound on the NLL), the K-particle Monte Carlo ELBO and the
inference gap.

Protocols (`--protocol`, digit-completion runs): `ours` evaluates the run on
its own data (binarized targets for the Bernoulli runs) with those estimators;
`pyro` follows Pyro's CVAE tutorial (`examples/cvae`): grey targets in [0, 1],
not binarized, scored by Bernoulli cross-entropy on the hidden pixels only,
and its reported figure, the 10-particle Monte Carlo negative ELBO with
q as proposal. docs/completion.md sets the two side by side.

Bits per dimension, D = C * H * W values per image:

- Gaussian decoders on 8-bit images: a density on [0, 1] is not a
  probability of the stored pixels, so we discretize it, each pixel level
  scored by the probability of its bin (`cvae.estimators`). The discretized
  NLL (ELBO or IWAE, with the same KL / weights) gives bpd = NLL / (D ln 2).
- Bernoulli decoders: the data are binary pixels, so NLL / (D ln 2) is bits
  per *binary* dimension: not comparable with 8-bit figures.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cvae.bounds import BOUNDS_IMAGES, BOUNDS_K, cli_bounds
from cvae.cli import OneLineParser, exit_with, number
from cvae.config import PRECISIONS
from cvae.data import ImageData, load_data
from cvae.errors import CVAEError
from cvae.estimators import (
    DEFAULT_GAP_STEPS,
    DEFAULT_IW_SAMPLES,
    EVAL_SEED,
    MAX_IW_SAMPLES,
    MAX_MAX_ROWS,
    MAX_ROWS,
    counts_of,
    elbo_per_image,
    inference_gap_per_image,
    is_8bit,
    iwae_per_image,
    ledger_of,
)
from cvae.generate import load_run
from cvae.ledger import alarm
from cvae.likelihoods import mean_se
from cvae.model import CVAE
from cvae.runs import clean_json
from cvae.runtime import select_amp_dtype, select_device

# How a digit-completion run is measured: on its own data, or as Pyro's CVAE tutorial measures its own
# (grey targets, hidden pixels, its 10-particle -ELBO). The paper's (Sohn et al. 2015, Table 1) is not here:
# its table could not be read from the sources at hand, so what it measures cannot be followed (docs/completion.md).
PROTOCOLS = ("ours", "pyro")
PYRO_PARTICLES = 10  # examples/cvae/main.py's --num-particles default, the one its README table was made with
PROTOCOL_WORDS = {
    "ours": "ours: the run's own test data, -log p(y | x) by importance sampling from q",
    "pyro": f"Pyro's tutorial: grey targets (not binarized) scored by Bernoulli cross-entropy on the hidden pixels, "
            f"its figure the {PYRO_PARTICLES}-particle Monte Carlo -ELBO from q",
}  # fmt: skip


# ---------------------------------------------------- grey targets' floor


def entropy_floor(model: CVAE, x: torch.Tensor, quadrants: int) -> torch.Tensor:
    """Per image, the least cross-entropy any Bernoulli decoder can reach on the hidden pixels of grey targets
    x: their own entropy, sum of -x log x - (1 - x) log(1 - x) over those pixels, float64, (N,); 0 where the
    targets are binary. A figure on grey targets minus this is what a model can still improve."""
    hidden = 1.0 - model.quadrant_masks[quadrants - 1].cpu().double()  # (C*H*W,)
    x64 = x.flatten(1).double()
    return ((torch.special.entr(x64) + torch.special.entr(1.0 - x64)) * hidden).sum(1)


# ------------------------------------------------------------- the report


def evaluate_model(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    batch_size: int = 1000,
    max_rows: int = MAX_ROWS,
    amp_dtype: torch.dtype | None = None,
    seed: int = EVAL_SEED,
    gap_images: int = 0,
    gap_steps: int = DEFAULT_GAP_STEPS,
    particles: int = 0,
) -> dict[str, float | int | str | None]:
    """Every test-set number of `python -m cvae.evaluate`, as a flat dict.

    Nats per image throughout; `*_se` are standard errors over images. The
    Gaussian decoder's `nelbo`/`iwae_nll` are densities on [0, 1]^D (they can
    be negative); its `*_discrete` numbers and bits/dim are for the 8-bit
    pixels (see the module docstring). `iw_samples = 0` skips the IWAE bound.

    A digit-completion model scores the hidden pixels given the shown ones:
    every figure is -log p(y | x) of those pixels, plus `prior_mc_nll` (the same
    K samples drawn from the prior p(z | x) instead of q) and `baseline_nll`
    (the deterministic baseline's, exact). A random-count model is evaluated at
    1, 2 and 3 given quadrants (`name_qK`), and `name` is their mean.

    `particles` P > 0 adds `mc_nelbo`, the P-particle Monte Carlo negative ELBO
    with q as proposal (Pyro's estimator), and, for grey completion targets,
    `entropy_floor`, their own entropy on the hidden pixels.
    """
    t0 = time.time()
    counts = counts_of(model)
    kw = dict(iw_samples=iw_samples, batch_size=batch_size, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
              gap_images=gap_images, gap_steps=gap_steps, particles=particles)  # fmt: skip
    parts = [_evaluate_at(model, x, y, quadrants=k, **kw) for k in counts]
    report = dict(parts[0])
    if counts != [None]:
        report["quadrants"] = counts[0] if len(counts) == 1 else 0
    if len(counts) > 1:
        for key, value in parts[0].items():
            if isinstance(value, float) and not key.endswith("_se"):
                values = [part[key] for part in parts]
                report[key] = sum(values) / len(values)
                if f"{key}_se" in parts[0]:  # the counts' errors as if independent (they share the images)
                    report[f"{key}_se"] = math.sqrt(sum(part[f"{key}_se"] ** 2 for part in parts)) / len(parts)
                for k, v in zip(counts, values, strict=True):
                    report[f"{key}_q{k}"] = v
    report["seconds"] = time.time() - t0
    return report


def _evaluate_at(
    model: CVAE, x: torch.Tensor, y: torch.Tensor, *, quadrants: int | None, iw_samples: int, batch_size: int,
    max_rows: int, amp_dtype: torch.dtype | None, seed: int, gap_images: int, gap_steps: int, particles: int,
) -> dict[str, float | int | str | None]:  # fmt: skip
    dims = int(x[0].numel()) if len(x) else 0
    gaussian = model.config.likelihood == "gaussian"
    binary = bool(((x == 0) | (x == 1)).all())
    discretize = gaussian and is_8bit(x)
    elbo = elbo_per_image(model, x, y, batch_size=batch_size, amp_dtype=amp_dtype, discretize=discretize, seed=seed,
                          quadrants=quadrants)  # fmt: skip
    nelbo, nelbo_se = mean_se(elbo.nelbo)
    report: dict[str, Any] = {
        "test_images": len(x),
        "dims": dims,
        "nelbo": nelbo,
        "nelbo_se": nelbo_se,
        "recon": float(elbo.recon.mean()) if len(x) else math.nan,
        "kl": float(elbo.kl.mean()) if len(x) else math.nan,
        "iw_samples": iw_samples,
        **ledger_of([elbo]),
    }
    report["kl_alarm"] = alarm(report.get("kl_dims"), report.get("active_units"))
    iwae = None
    if iw_samples > 0:
        iwae = iwae_per_image(
            model, x, y, k=iw_samples, max_rows=max_rows, amp_dtype=amp_dtype, discretize=discretize, seed=seed,
            quadrants=quadrants,
        )  # fmt: skip
        report["iwae_nll"], report["iwae_nll_se"] = mean_se(-iwae.log_px)
        if quadrants is not None:  # the paper's second estimator: the same samples' count from the prior
            from_prior = iwae_per_image(model, x, y, k=iw_samples, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
                                        proposal="prior", quadrants=quadrants)  # fmt: skip
            report["prior_mc_nll"], report["prior_mc_nll_se"] = mean_se(-from_prior.log_px)
    if particles > 0:  # the mean of P log weights from q, not their log-mean-exp: Pyro's Trace_ELBO(num_particles=P)
        mc = iwae_per_image(model, x, y, k=particles, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
                            quadrants=quadrants)  # fmt: skip
        assert mc.mean_log_w is not None
        report["particles"] = particles
        report["mc_nelbo"], report["mc_nelbo_se"] = mean_se(-mc.mean_log_w)
        if quadrants is not None and not binary and not gaussian:
            report["entropy_floor"], report["entropy_floor_se"] = mean_se(entropy_floor(model, x, quadrants))
    if elbo.baseline is not None:
        report["baseline_nll"], report["baseline_nll_se"] = mean_se(elbo.baseline)
    if gap_images > 0:  # on the first gap_images images, in fp32: it fits q by gradient steps
        gap = inference_gap_per_image(model, x[:gap_images], y[:gap_images], steps=gap_steps, seed=seed,
                                      quadrants=quadrants)  # fmt: skip
        report["gap_images"], report["gap_steps"] = len(gap.amortized), gap_steps
        report["gap_nelbo_amortized"], report["gap_nelbo_amortized_se"] = mean_se(gap.amortized)
        report["gap_nelbo_optimized"], report["gap_nelbo_optimized_se"] = mean_se(gap.optimized)
        report["amortization_gap"], report["amortization_gap_se"] = mean_se(gap.amortized - gap.optimized)
    bits = dims * math.log(2) if dims else math.nan
    if gaussian and discretize:
        assert elbo.recon_discrete is not None
        report["nelbo_discrete"], report["nelbo_discrete_se"] = mean_se(elbo.recon_discrete + elbo.kl)
        report["recon_discrete"] = float(elbo.recon_discrete.mean())
        report["bpd_kind"] = "8-bit pixels, discretized Gaussian"
        report["bpd_elbo"] = report["nelbo_discrete"] / bits
        if iwae is not None and iwae.log_px_discrete is not None:
            report["iwae_nll_discrete"], report["iwae_nll_discrete_se"] = mean_se(-iwae.log_px_discrete)
            report["bpd_iwae"] = report["iwae_nll_discrete"] / bits
    elif gaussian:
        report["bpd_kind"] = "none: the test images are not 8-bit levels"
    elif not binary:
        report["bpd_kind"] = "none: grey targets scored by cross-entropy, not a likelihood of the pixels"
    else:
        report["bpd_kind"] = "binary pixels (not comparable with 8-bit bits/dim)"
        report["bpd_elbo"] = nelbo / bits
        if iwae is not None:
            report["bpd_iwae"] = report["iwae_nll"] / bits
    return report


def evaluate_checkpoint(
    path: Path | str,
    *,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    test_subset: int | None = None,
    batch_size: int = 1000,
    max_rows: int = MAX_ROWS,
    seed: int = EVAL_SEED,
    data_dir: str | None = None,
    precision: str = "fp32",
    device: str = "auto",
    data: object | None = None,
    gap_images: int = 0,
    gap_steps: int = DEFAULT_GAP_STEPS,
    protocol: str = "ours",
) -> dict:
    """Load a run folder or checkpoint and its test set; `evaluate_model` plus what was evaluated.

    `data` (an `ImageData` already loaded with the protocol's DataConfig: the
    run's own for "ours") skips reloading, e.g. when evaluating many
    checkpoints of one run. `protocol` "pyro" (digit-completion runs only)
    evaluates on grey test digits, whatever the run trained on, and adds
    Pyro's 10-particle negative ELBO (`mc_nelbo`) and the targets' entropy.
    """

    if not 0 <= iw_samples <= MAX_IW_SAMPLES:
        raise CVAEError(f"--iw-samples (-k) must be 0 (skip) to {MAX_IW_SAMPLES}, got {iw_samples}")
    if not 1 <= max_rows <= MAX_MAX_ROWS:
        raise CVAEError(f"--max-rows must be 1 to {MAX_MAX_ROWS}, got {max_rows}")
    if gap_images < 0 or gap_steps < 1:
        raise CVAEError(f"--gap-images must be 0 or more and --gap-steps positive, got {gap_images} and {gap_steps}")
    if test_subset is not None and test_subset < 1:
        raise CVAEError(f"--test-subset must be positive, got {test_subset}")
    if protocol not in PROTOCOLS:
        raise CVAEError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    dev = select_device(device)
    loaded = load_run(path, dev)
    model, config, info, payload = loaded.model, loaded.config, loaded.info, loaded.checkpoint
    if protocol != "ours" and config.model.condition != "quadrants":
        raise CVAEError(f"--protocol {protocol} measures digit completion; this run's condition is "
                        f"{config.model.condition}: use --protocol ours")  # fmt: skip
    data_config = config.data if data_dir is None else replace(config.data, data_dir=data_dir)
    if protocol == "pyro":  # Pyro's targets and inputs are the grey digits, never binarized
        data_config = replace(data_config, binarize="none")
    if not isinstance(data, ImageData):
        data = load_data(data_config)
        if data.info.to_dict() != info.to_dict():
            raise CVAEError("the test data differ in shape or classes from the data the checkpoint was trained on")
    x, y = data.test_x, data.test_y
    if test_subset:
        x, y = x[:test_subset], y[:test_subset]
    if len(x) == 0:
        raise CVAEError("the test set is empty")
    amp_dtype = select_amp_dtype(precision, dev)
    report = evaluate_model(
        model, x, y, iw_samples=iw_samples, batch_size=batch_size, max_rows=max_rows, amp_dtype=amp_dtype, seed=seed,
        gap_images=gap_images, gap_steps=gap_steps, particles=PYRO_PARTICLES if protocol == "pyro" else 0,
    )  # fmt: skip
    head = {
        "checkpoint": str(path),
        "epoch": payload.get("epoch"),
        "dataset": info.name,
        "likelihood": config.model.likelihood + (" (learned sigma)" if config.model.learn_sigma else ""),
        "latent_dim": config.model.latent_dim,
        "condition": config.model.condition,
        "protocol": protocol,
        "binarization": data_config.binarize,
        "trained_binarization": config.data.binarize,
        "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
        "seed": seed,
    }
    return {**head, **report}


# ----------------------------------------------------------- command line


def format_report(r: dict) -> str:
    """A plain-text table of an `evaluate_checkpoint` report."""

    def num(key: str) -> str:
        value, se = r.get(key), r.get(f"{key}_se")
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        text = f"{value:.2f}"
        if isinstance(se, float) and math.isfinite(se):
            text += f" ± {se:.2f}"
        return text

    gaussian = str(r["likelihood"]).startswith("gaussian")
    unit = "nats (density on [0,1]^D)" if gaussian else "nats"
    binarization = r["binarization"]
    if r.get("trained_binarization", binarization) != binarization:
        binarization += f" (the run trained on {r['trained_binarization']})"
    rows = [
        ("checkpoint", f"{r['checkpoint']} (epoch {r['epoch']})"),
        ("data", f"{r['dataset']}, {r['test_images']} test images, D = {r['dims']}, binarization: {binarization}"),
        ("model", f"{r['likelihood']}, z = {r['latent_dim']}, {r['precision']}"),
        (f"negative ELBO [{unit}]", f"{num('nelbo')}  (recon {r['recon']:.2f} + KL {r['kl']:.2f}; 1 sample)"),
    ]
    completion = r.get("condition") == "quadrants"
    if completion:
        unit = "nats, hidden pixels"
        given = "1-3 (random per image; the mean of 1, 2 and 3)" if r.get("quadrants") == 0 else r.get("quadrants")
        rows[3] = (f"negative ELBO [{unit}]", f"{num('nelbo')}  (recon {r['recon']:.2f} + KL {r['kl']:.2f}; 1 sample)")
        rows.insert(3, ("given", f"{given} quadrant(s): -log p(y | x) of the hidden pixels y given the shown x"))
        rows.insert(4, ("protocol", PROTOCOL_WORDS[r.get("protocol", "ours")]))
    if isinstance(r.get("kl_dims"), list):
        dims = ", ".join(f"{v:.2f}" for v in r["kl_dims"])
        rows.append(("KL per dimension [nats]", f"{dims}  ({r.get('active_units')} of {len(r['kl_dims'])} active)"))
    if r.get("kl_alarm"):
        rows.append(("warning", r["kl_alarm"]))
    if r.get("iw_samples"):
        name = "importance sampling from q(z | x, y)" if completion else "IWAE NLL"
        rows.append((f"{name}, K = {r['iw_samples']} [{unit}]", num("iwae_nll")))
    if "prior_mc_nll" in r:
        rows.append((f"Monte Carlo from p(z | x), K = {r['iw_samples']} [{unit}]", num("prior_mc_nll")))
    if "mc_nelbo" in r:
        rows.append((f"Monte Carlo -ELBO, {r['particles']} particles from q [{unit}]", num("mc_nelbo")))
    if "entropy_floor" in r:
        rows.append((f"floor: the grey targets' own entropy [{unit}]", num("entropy_floor")))
    if "baseline_nll" in r:
        rows.append((f"deterministic baseline [{unit}]", num("baseline_nll")))
    for k in (1, 2, 3):
        if f"nelbo_q{k}" in r:
            parts = [f"-ELBO {r[f'nelbo_q{k}']:.2f}"] + [f"{label} {r[f'{key}_q{k}']:.2f}" for key, label in
                     (("iwae_nll", "IS"), ("prior_mc_nll", "MC"), ("mc_nelbo", "MC-ELBO"), ("baseline_nll", "baseline"),
                      ("entropy_floor", "floor")) if f"{key}_q{k}" in r]  # fmt: skip
            rows.append((f"  {k} quadrant(s) given", ", ".join(parts)))
    if "nelbo_discrete" in r:
        rows.append(("negative ELBO [nats, 8-bit]", f"{num('nelbo_discrete')}  (recon {r['recon_discrete']:.2f})"))
        if "iwae_nll_discrete" in r:
            rows.append((f"IWAE NLL, K = {r['iw_samples']} [nats, 8-bit]", num("iwae_nll_discrete")))
    if r.get("gap_images"):
        rows.append((
            f"inference gap, first {r['gap_images']} images [{unit}]",
            f"encoder's q {num('gap_nelbo_amortized')}, q fitted per image ({r['gap_steps']} steps) "
            f"{num('gap_nelbo_optimized')}: amortization gap {num('amortization_gap')}",
        ))  # fmt: skip
    if "bpd_elbo" in r:
        bpd = f"{r['bpd_elbo']:.4f} (ELBO)"
        if "bpd_iwae" in r:
            bpd += f", {r['bpd_iwae']:.4f} (IWAE)"
        rows.append(("bits/dim", f"{bpd}  [{r['bpd_kind']}]"))
    elif "bpd_kind" in r:
        rows.append(("bits/dim", r["bpd_kind"]))
    rows.append(("time", f"{r['seconds']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cli(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cvae.evaluate", description="Test-set likelihoods of a trained CVAE, in nats.")
    p.add_argument("checkpoint", help="a run folder or a checkpoint file")
    p.add_argument("--iw-samples", "-k", type=number(int, low_open=False), default=None,
                   help=f"importance samples K for the IWAE bound, at most {MAX_IW_SAMPLES}; 0 skips it; for a "
                        f"digit-completion run (condition quadrants), the samples S of its -log p(y | x), from q "
                        f"and from the prior; with --bounds, the largest K of the ladder [{DEFAULT_IW_SAMPLES}; "
                        f"with --bounds {BOUNDS_K}]")  # fmt: skip
    p.add_argument("--test-subset", type=number(int), default=None, help="evaluate the first N test images only")
    p.add_argument("--batch-size", type=number(int), default=1000, help="images per ELBO batch [1000]")
    p.add_argument("--max-rows", type=number(int), default=MAX_ROWS,
                   help=f"IWAE: images x samples per decoder pass, bounds memory; at most {MAX_MAX_ROWS} "
                        f"[{MAX_ROWS}]")  # fmt: skip
    p.add_argument(
        "--seed", type=number(int, low_open=False), default=EVAL_SEED, help=f"seed of the z noise [{EVAL_SEED}]"
    )
    p.add_argument("--data-dir", default=None, help="folder with MNIST/raw and cifar-10-batches-py [the run's]")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="[fp32]")
    # auto picks the device the way the trainer does (cvae.runtime.select_device), so the default
    # reproduces the trainer's per-epoch test figures wherever both run
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps [auto: as the trainer]")
    p.add_argument("--gap-images", type=number(int, low_open=False), default=0,
                   help="also fit a Gaussian q to each of the first N test images and report how much the "
                        "encoder loses (the amortization gap); 0 skips it [0]")  # fmt: skip
    p.add_argument("--gap-steps", type=number(int), default=DEFAULT_GAP_STEPS,
                   help=f"Adam steps when fitting q for --gap-images [{DEFAULT_GAP_STEPS}]")  # fmt: skip
    p.add_argument("--protocol", choices=PROTOCOLS, default="ours",
                   help="digit-completion runs: ours (the run's own data; -log p(y | x) by importance sampling) or "
                        f"pyro (as Pyro's CVAE tutorial measures: grey targets, hidden pixels, its "
                        f"{PYRO_PARTICLES}-particle -ELBO from q) [ours]")  # fmt: skip
    p.add_argument("--bounds", action="store_true",
                   help=f"the bounds ladder and its two gaps (cvae.bounds): -ELBO with the encoder's q and with q "
                        f"fitted per image, IWAE at K = 1, 10, ... -k, on the first --test-subset images "
                        f"[{BOUNDS_IMAGES}], kept in the run folder's bounds.json")  # fmt: skip
    p.add_argument("--nice", type=int, default=0, help="--bounds: lower this process's CPU priority by N (0-19) [0]")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.bounds:
        return cli_bounds(args, p)
    iw_samples = DEFAULT_IW_SAMPLES if args.iw_samples is None else args.iw_samples
    try:
        report = evaluate_checkpoint(
            args.checkpoint, iw_samples=iw_samples, test_subset=args.test_subset, batch_size=args.batch_size,
            max_rows=args.max_rows, seed=args.seed, data_dir=args.data_dir, precision=args.precision,
            device=args.device, gap_images=args.gap_images, gap_steps=args.gap_steps, protocol=args.protocol,
        )  # fmt: skip
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(clean_json(report), indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    exit_with(cli())
