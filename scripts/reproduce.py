"""Regenerate, from scratch, every number and picture of the README's results section.

    python -m scripts.reproduce                                  # everything, full length (days on a CPU)
    python -m scripts.reproduce --only mnist_z2 --epochs-scale 0.2
    python -m scripts.reproduce --only cifar_fixed --epochs cifar_fixed=10 --cifar-dir /tmp/cifar10-jpg
    python -m scripts.reproduce --smoke --out /tmp/smoke         # 2 epochs on subsets: a check, not results

Experiments (the reference's published settings: batch 64, lr 1e-4):

  mnist_z2        MNIST, Bernoulli (static binarization), z=2, 50 epochs: mean
                  reconstructions of the first test batch at epochs 1, 2, 5, 10, 20,
                  30, 40, 50; the latent animation (GIF); uniform and random
                  generation per digit; test negative ELBO per epoch and IWAE at
                  saved checkpoints, as a curve.
  mnist_z10/z20   the same at z=10 and z=20.
  mnist_gauss_fixed / mnist_gauss_learned   Gaussian decoders, fixed sigma = 1 and learned.
  cifar_fixed / cifar_learned   CIFAR-10 as the JPEG image folder in ../shared/data
                  (offline), Gaussian, z=50, 100 epochs, reconstructions at epochs
                  1, 5, 25, 50, 75, 100, bits/dim. JPEG re-encoding changes the
                  pixels: these bits/dim are not comparable to published CIFAR-10 figures.
                  Unpack first: tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10-jpg

Writes OUT/ (default results/): figures, results.json and RESULTS.md (a table
with epochs, wall time and machine, beside the published anchors). Run folders go
to checkpoints/reproduce-<name> (the app lists them); numbered checkpoints other
than the last are deleted once evaluated unless --keep-checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvae import figures
from cvae.data import load_data
from cvae.errors import CVAEError
from cvae.estimators import DEFAULT_IW_SAMPLES
from cvae.evaluate import evaluate_checkpoint
from cvae.generate import load_model
from cvae.runs import RunDir, clean_json, read_json
from cvae.runtime import machine_info
from cvae.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent

MNIST_SNAPSHOTS = (1, 2, 5, 10, 20, 30, 40, 50)
CIFAR_SNAPSHOTS = (1, 5, 25, 50, 75, 100)
PUBLISHED = """\
| published anchor (REFERENCE.md) | value | caveat |
|---|---|---|
| the reference code, MNIST Bernoulli z=2, 1 epoch | 142.8 nats -ELBO (136.98 recon + 5.82 KL), 198 s/epoch | static binarization, ELBO, measured on this machine kind |
| TensorFlow CVAE tutorial, z=2, 10 epochs | 155.9 nats -ELBO | static binarization, unconditional VAE, ELBO |
| IWAE paper, one stochastic layer | VAE 88.71, IWAE (k=50) 87.10 nats | static binarization, unconditional, bigger model, IWAE-trained for 87.10 |
| conditional IWAE with a label prior | about 80.8 nats | dynamic binarization: not comparable with static |
| pytorch/examples VAE, 10 epochs | 105.6 | grayscale BCE targets: not a likelihood |
| CIFAR-10 bits/dim: IAF-VAE / NVAE / VDVAE | 3.11 / 2.91 / 2.87 | discretized logistic, real CIFAR-10 (ours: JPEG copy), days of GPU |
"""


@dataclass
class Experiment:
    name: str
    title: str
    train: dict[str, Any]  # keyword arguments of cvae.train.main
    epochs: int
    snapshots: tuple[int, ...] = ()
    latent_gif: bool = False
    generation: bool = False
    curve: bool = False
    cifar: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def experiments(cifar_dir: str) -> dict[str, Experiment]:
    common = dict(batch_size=64, learning_rate=1e-4, arch="conv")
    bern = dict(dataset="MNIST", decoder_type="Bernoulli", binarize="static", **common)
    gauss = dict(dataset="MNIST", decoder_type="Gaussian", latent_dim=10, **common)
    cifar = dict(dataset=cifar_dir, decoder_type="Gaussian", latent_dim=50, **common)
    exps = [
        Experiment("mnist_z2", "MNIST, Bernoulli, z=2", {**bern, "latent_dim": 2}, 50, MNIST_SNAPSHOTS,
                   latent_gif=True, generation=True, curve=True),
        Experiment("mnist_z10", "MNIST, Bernoulli, z=10", {**bern, "latent_dim": 10}, 50, (1, 50)),
        Experiment("mnist_z20", "MNIST, Bernoulli, z=20", {**bern, "latent_dim": 20}, 50, (1, 50)),
        Experiment("mnist_gauss_fixed", "MNIST, Gaussian, fixed sigma=1, z=10", {**gauss, "model_sigma": False},
                   50, (1, 50)),
        Experiment("mnist_gauss_learned", "MNIST, Gaussian, learned sigma, z=10", {**gauss, "model_sigma": True},
                   50, (1, 50)),
        Experiment("cifar_fixed", "CIFAR-10 (JPEG folder), Gaussian, fixed sigma=1, z=50",
                   {**cifar, "model_sigma": False}, 100, CIFAR_SNAPSHOTS, cifar=True),
        Experiment("cifar_learned", "CIFAR-10 (JPEG folder), Gaussian, learned sigma, z=50",
                   {**cifar, "model_sigma": True}, 100, CIFAR_SNAPSHOTS, cifar=True),
    ]  # fmt: skip
    return {e.name: e for e in exps}


# ----------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    return {k: v for k, v in machine_info().items() if k in ("cpu", "cores", "torch", "python", "gpu")}


# ------------------------------------------------------------------ running


def run_experiment(exp: Experiment, args: argparse.Namespace, epochs: int, out: Path, command: str) -> dict[str, Any]:
    run_dir = Path(args.runs_root) / f"reproduce-{exp.name}"
    train_kwargs = {**exp.train, "epochs": epochs, "run_dir": str(run_dir), "quiet": args.quiet}
    snapshots = sorted({e for e in exp.snapshots if e <= epochs} | {epochs})
    if exp.curve:
        train_kwargs["checkpoint_every"] = max(1, args.curve_every if args.curve_every else math.ceil(epochs / 10))
    if args.smoke:
        train_kwargs.update(train_subset=128, test_subset=64, latent_subset=64)
    if args.threads:
        train_kwargs["threads"] = args.threads
    if args.device:
        train_kwargs["device"] = args.device
    status = RunDir(run_dir).read_status() if run_dir.exists() else {}
    reused = args.reuse and status.get("state") == "finished" and status.get("epoch") == epochs
    t0 = time.time()
    if not reused:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"== {exp.name}: {exp.title}, {epochs} epochs -> {run_dir}", flush=True)
        result = train_main(**train_kwargs)
        if result.state != "finished":
            raise CVAEError(f"{exp.name}: training {result.state}")
    train_seconds = time.time() - t0
    run = RunDir(run_dir)
    metrics = run.read_metrics()
    if reused:
        train_seconds = float(metrics[-1]["time"]) if metrics else math.nan
    config = read_json(run.config_path) or {}
    data = load_data(_data_config(config))

    record: dict[str, Any] = {
        "name": exp.name, "title": exp.title, "epochs": epochs, "run_dir": str(run_dir),
        "train": {k: v for k, v in train_kwargs.items() if k not in ("run_dir", "quiet")},
        "train_seconds": train_seconds, "seconds_per_epoch": [m["seconds"] for m in metrics],
        "device": run.read_status().get("device"), "precision": run.read_status().get("precision"),
        "metrics": metrics, "figures": {},
    }  # fmt: skip
    # The curve: IWAE at every numbered checkpoint, on the first --iw-test-subset test images.
    if exp.curve:
        points = []
        for ckpt in sorted(run.checkpoints.glob("epoch_*.pt")):
            r = evaluate_checkpoint(ckpt, iw_samples=args.iw_samples, test_subset=args.curve_test_subset, data=data)
            points.append({k: r[k] for k in ("epoch", "nelbo", "nelbo_se", "iwae_nll", "iwae_nll_se",
                                              "iw_samples", "test_images")})  # fmt: skip
            print(f"   epoch {r['epoch']}: IWAE NLL {r['iwae_nll']:.2f} ± {r['iwae_nll_se']:.2f}", flush=True)
            if not args.keep_checkpoints and r["epoch"] != epochs:
                ckpt.unlink()
        record["curve"] = points
        curve_path = out / f"{exp.name}_curve.png"
        caption = figures.open_run(run_dir).caption(f"epochs 1–{epochs}", [command])
        curve_path.write_bytes(figures.curves(metrics, caption, title=f"{exp.title}: test negative ELBO and IWAE",
                                              iwae=points, formats=("png",))["png"])  # fmt: skip
        record["figures"]["curve"] = curve_path.name
    # Final numbers: the last checkpoint, the whole test set (of this run's data config).
    final = evaluate_checkpoint(run.latest_checkpoint, iw_samples=args.iw_samples,
                                test_subset=args.final_test_subset, data=data)  # fmt: skip
    record["final"] = final
    msg = f"   final: -ELBO {final['nelbo']:.2f}"
    if "iwae_nll" in final:
        msg += f", IWAE NLL {final['iwae_nll']:.2f} ± {final['iwae_nll_se']:.2f} (K={final['iw_samples']})"
    if "bpd_iwae" in final:
        msg += f", {final['bpd_iwae']:.4f} bits/dim [{final['bpd_kind']}]"
    print(msg, flush=True)

    recon_path = out / f"{exp.name}_recon.png"
    source = figures.open_run(run_dir)
    shown = [e for e in snapshots if run.artifact(e, "recon_mean.png").is_file()]
    caption = source.caption(f"epochs {', '.join(map(str, shown))}", [command])
    # The figures are the library's slides (cvae.figures, as `cvae export` draws them), captioned with this command.
    recon_path.write_bytes(figures.grids(figures.recon_panels(run_dir, shown), caption, formats=("png",),
                                         title=f"{exp.title}: mean reconstructions of the first test batch")["png"])  # fmt: skip
    record["figures"]["recon"] = recon_path.name
    record["snapshots"] = snapshots
    if exp.latent_gif:
        gif = out / f"{exp.name}_latent.gif"
        gif.write_bytes(figures.export(run_dir, figures.Export("animation"))["gif"])
        record["latent_frames"] = len(figures.frame_epochs(len(run.epochs_with("latent.npy"))))
        record["figures"]["latent"] = gif.name
    if exp.generation:
        model = load_model(run.latest_checkpoint)
        caption = source.caption(f"epoch {epochs}", [command])
        for mode in ("uniform", "random"):
            p = out / f"{exp.name}_{mode}.png"
            panels = figures.generation_panels(model, model.info.class_names, mode=mode, n=args.grid)
            what = f"a uniform {args.grid}x{args.grid} grid over z in [-2, 2]^2" if mode == "uniform" else "z ~ N(0, I)"
            p.write_bytes(figures.grids(panels, caption, title=f"{exp.title}: generation per class, {what}",
                                        formats=("png",))["png"])  # fmt: skip
            record["figures"][mode] = p.name
    return record


def _data_config(config: dict):
    from cvae.config import RunConfig

    return RunConfig.from_dict({k: config[k] for k in ("data", "model", "train")}).data


# ---------------------------------------------------------------- reporting


def _fmt(value: Any, se: Any = None, digits: int = 2) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    if isinstance(se, float) and math.isfinite(se):
        text += f" ± {se:.{digits}f}"
    return text


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    order = list(experiments(""))
    runs = sorted(results["experiments"].values(), key=lambda r: order.index(r["name"]) if r["name"] in order else 99)
    lines = [
        "# Results",
        "",
        "Made by `"
        + "`, then `".join(dict.fromkeys(r.get("command", results["command"]) for r in runs))
        + f"` on {m['cpu']} ({m['cores']} cores"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f"), torch {m['torch']}, {time.strftime('%Y-%m-%d', time.localtime(results['started']))}; "
        f"wall time of the last invocation {results['seconds'] / 60:.1f} min (each experiment's own train time is in the table)."
        + (" **Smoke run: 128 training images, 2 epochs; not results.**" if results["smoke"] else ""),
        "",
        "Test set, nats per image (mean ± standard error over test images). -ELBO: one z per image, as the "
        "training metrics. IWAE: the importance-weighted bound with K samples (Burda et al. 2016), an upper "
        "bound on the negative log-likelihood. Gaussian rows: densities on [0,1]^D in nats, then bits/dim "
        "of the 8-bit pixels from the likelihood discretized to 256 levels (see docs). Bernoulli rows: "
        "static binarization; their bits/dim are per binary pixel.",
        "",
        "| experiment | epochs | train time | s/epoch | -ELBO (recon + KL) | IWAE NLL | bits/dim ELBO / IWAE | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        f = r["final"]
        per_epoch = np.median(r["seconds_per_epoch"]) if r["seconds_per_epoch"] else math.nan
        iw = _fmt(f.get("iwae_nll"), f.get("iwae_nll_se")) + (f" (K={f['iw_samples']})" if f.get("iw_samples") else "")
        bpd = f"{_fmt(f.get('bpd_elbo'), digits=3)} / {_fmt(f.get('bpd_iwae'), digits=3)}"
        elbo = f"{_fmt(f['nelbo'], f.get('nelbo_se'))} ({f['recon']:.2f} + {f['kl']:.2f})"
        lines.append(
            f"| {r['title']} | {r['epochs']} | {r['train_seconds'] / 60:.1f} min | {per_epoch:.1f} | {elbo} | "
            f"{iw} | {bpd} | {r['device']}, {r['precision']} |"
        )
    lines += ["", PUBLISHED, ""]
    for r in runs:
        lines.append(f"## {r['title']}")
        lines.append("")
        for key, fig in r["figures"].items():
            lines.append(f"![{r['name']} {key}]({fig})")
        if r.get("curve"):
            lines.append("")
            lines.append("| epoch | -ELBO (subset) | IWAE NLL |")
            lines.append("|---|---|---|")
            for p in r["curve"]:
                lines.append(
                    f"| {p['epoch']} | {_fmt(p['nelbo'], p['nelbo_se'])} | {_fmt(p['iwae_nll'], p['iwae_nll_se'])} |"
                )
        lines.append("")
    path.write_text("\n".join(lines))


# -------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", default=None, help="comma-separated experiments [all]")
    p.add_argument("--skip", default="", help="comma-separated experiments to leave out")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every experiment's epochs [1.0]")
    p.add_argument("--epochs", action="append", default=[], metavar="NAME=N", help="one experiment's epochs")
    p.add_argument("--out", default=str(ROOT / "results"), help="figures, results.json, RESULTS.md [results/]")
    p.add_argument("--runs-root", default=str(ROOT / "checkpoints"), help="where run folders go [checkpoints/]")
    p.add_argument("--cifar-dir", default="/tmp/cifar10-jpg", help="the CIFAR-10 image folder [/tmp/cifar10-jpg]")
    p.add_argument("--iw-samples", type=int, default=DEFAULT_IW_SAMPLES, help=f"K for IWAE [{DEFAULT_IW_SAMPLES}]")
    p.add_argument("--curve-every", type=int, default=0, help="mnist_z2: checkpoint every N epochs [epochs / 10]")
    p.add_argument("--curve-test-subset", type=int, default=2000, help="IWAE curve: first N test images [2000]")
    p.add_argument("--final-test-subset", type=int, default=None, help="final numbers: first N test images [all]")
    p.add_argument("--grid", type=int, default=20, help="generation: n x n images per class [20]")
    p.add_argument("--device", default=None, help="training device [auto]")
    p.add_argument("--threads", type=int, default=0, help="CPU threads [all cores]")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs of the same length instead of retraining")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every numbered checkpoint")
    p.add_argument("--smoke", action="store_true", help="2 epochs on 128 images, K=5: checks the script, not results")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)
    if args.smoke:
        args.iw_samples = min(args.iw_samples, 5)
        args.curve_test_subset = min(args.curve_test_subset, 64)
        args.grid = min(args.grid, 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    all_exps = experiments(args.cifar_dir)
    names = args.only.split(",") if args.only else list(all_exps)
    names = [n for n in names if n and n not in args.skip.split(",")]
    overrides = {}
    for item in args.epochs:
        name, _, value = item.partition("=")
        if name not in all_exps or not value.isdigit() or int(value) < 1:
            print(f"error: --epochs expects NAME=N with NAME in {', '.join(all_exps)}, got {item!r}", file=sys.stderr)
            return 2
        overrides[name] = int(value)
    unknown = [n for n in names if n not in all_exps]
    if unknown or not names or args.epochs_scale <= 0 or args.iw_samples < 0:
        print(f"error: choose experiments among {', '.join(all_exps)} and a positive --epochs-scale", file=sys.stderr)
        return 2
    if any(all_exps[n].cifar for n in names) and not Path(args.cifar_dir).is_dir():
        print(f"error: {args.cifar_dir} is not a folder: unpack ../shared/data/cifar10-jpg.tar.gz there first",
              file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, Any] = {"experiments": {}}
    if args.only and results_path.is_file():  # keep other experiments' earlier results
        results = json.loads(results_path.read_text())
    command = "python -m scripts.reproduce " + " ".join(sys.argv[1:] if argv is None else argv)
    results.update(command=command, machine=machine(), started=started, smoke=args.smoke)
    for name in names:
        exp = all_exps[name]
        epochs = 2 if args.smoke else overrides.get(name, max(1, round(exp.epochs * args.epochs_scale)))
        try:
            results["experiments"][name] = {**run_experiment(exp, args, epochs, out, command), "command": command}
        except CVAEError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 2
        results["seconds"] = time.time() - started
        results_path.write_text(json.dumps(clean_json(results), indent=1, default=str))
        write_markdown(results, out / "RESULTS.md")
    print(f"wrote {out / 'RESULTS.md'} and {results_path} in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
