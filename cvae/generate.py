"""Loading a trained model, and generation from it: the reference's per-class 20x20 grids, and completions.

    python -m cvae.generate uniform checkpoints/<run>            # one PNG per class
    python -m cvae.generate random  checkpoints/<run> --seed 3
    python -m cvae.generate completion checkpoints/<run> --index 7   # digit completion: one sheet

`uniform`: a 20x20 grid over the first two latent dimensions (others at 0),
evenly spaced in [-span, span]; `random`: 400 codes z ~ N(0, I). Each code is
decoded under the chosen class into its mean image E[x | z, y]. `completion`
(a model with condition quadrants): test digits given in part, each as
given | truth | baseline | CVAE samples, z ~ p(z | x).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from cvae.artifacts import grid_png
from cvae.checkpoints import checked_config, load_checkpoint, state_dict_problem
from cvae.cli import OneLineParser, exit_with
from cvae.config import RunConfig
from cvae.data import DatasetInfo
from cvae.errors import CheckpointError, CVAEError
from cvae.model import CVAE, QUADRANT_ORDER, Condition
from cvae.runs import RunDir, read_jsonl, write_atomic


class LoadedRun(NamedTuple):
    """A trained model and what it was trained with, from one run folder or checkpoint."""

    model: CVAE  # in eval mode; model.run_config and model.info are the two fields below
    config: RunConfig
    info: DatasetInfo  # shapes and class names of its data
    checkpoint: dict  # the checkpoint's payload (epoch, metrics, ...)
    metrics: list[dict]  # the run folder's metrics.jsonl, one record per epoch ([] for a lone checkpoint file)


def load_run(path: Path | str, device: torch.device | str = "cpu") -> LoadedRun:
    """A run folder or checkpoint file: its model (eval mode, weights-only and checked), config, data
    shapes, checkpoint and metrics. Every condition, and run folders of older versions (cvae.legacy)."""
    payload = load_checkpoint(path)
    config, info = checked_config(payload)
    model = CVAE(config.model)
    problem = state_dict_problem(payload["model"], model)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: weights do not fit the model in its config ({str(err).splitlines()[0][:160]})"
        ) from None
    model.run_config, model.info = config, info
    folder = Path(path)
    metrics = read_jsonl(RunDir(folder).metrics_path) if folder.is_dir() else []
    return LoadedRun(model.to(device).eval(), config, info, payload, metrics)


def load_model(path: Path | str, device: torch.device | str = "cpu") -> CVAE:
    """The trained model of a run folder or checkpoint file, in eval mode (`model.run_config`, `model.info`
    say what it was trained with and on; `load_run` gives the checkpoint and metrics too)."""
    return load_run(path, device).model


def latent_grid(latent_dim: int, n: int = 20, span: float = 2.0) -> torch.Tensor:
    """(n*n, Z) codes on a grid over dims 0 and 1 (rows: dim 1 from +span down; cols: dim 0)."""
    axis = torch.linspace(-span, span, n)
    z = torch.zeros(n * n, latent_dim)
    z1, z0 = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    z[:, 0] = z0.reshape(-1)
    if latent_dim > 1:
        z[:, 1] = z1.reshape(-1)
    return z


@torch.no_grad()
def decode_class(model: CVAE, z: torch.Tensor, label: int) -> torch.Tensor:
    """Mean images (N, C, H, W) for codes `z` under class `label`."""
    device = next(model.parameters()).device
    labels = torch.full((len(z),), int(label), dtype=torch.long, device=device)
    return model.generate(z.to(device), labels).cpu()


def uniform_images(model: CVAE, label: int, n: int = 20, span: float = 2.0) -> torch.Tensor:
    return decode_class(model, latent_grid(model.config.latent_dim, n, span), label)


def random_images(model: CVAE, label: int, count: int = 400, seed: int = 0) -> torch.Tensor:
    z = torch.randn(count, model.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    return decode_class(model, z, label)


@torch.no_grad()
def restyle(model: CVAE, x: torch.Tensor, label: int) -> torch.Tensor:
    """Encode one image (C, H, W) under its label; decode its code under every class. (K, C, H, W)."""
    device = next(model.parameters()).device
    mu = model.encode(x[None].to(device), torch.tensor([label], device=device)).mu
    k = model.config.num_classes
    return model.generate(mu.expand(k, -1), torch.arange(k, device=device)).cpu()


@torch.no_grad()
def interpolate(model: CVAE, xa: np.ndarray | torch.Tensor, ya: int, xb: np.ndarray | torch.Tensor, yb: int,
                steps: int) -> torch.Tensor:  # fmt: skip
    """Mean images (steps, C, H, W) from image a to image b: their posterior means and their one-hot labels
    blended linearly together (a label model), decoded; the label blends from a's class to b's."""
    device = next(model.parameters()).device
    x = torch.stack([torch.as_tensor(xa), torch.as_tensor(xb)]).to(device)
    y = torch.tensor([ya, yb], device=device)
    cond = model.condition(x, y)
    mu = model.encode(x, cond).mu  # (2, Z)
    t = torch.linspace(0, 1, steps, device=device)[:, None]  # (S, 1)
    z = (1 - t) * mu[0] + t * mu[1]
    code = (1 - t) * cond.code[0] + t * cond.code[1]  # (S, K): mixed labels between the two classes
    return model.generate(z, Condition(code, None)).cpu()


def generate_images(model: CVAE, label: int, *, mode: str = "random", n: int = 20, span: float = 2.0,
                    seed: int = 0) -> torch.Tensor:  # fmt: skip
    """n*n images (N, C, H, W) of class `label`: codes z ~ N(0, I) ("random", seeded) or a grid over
    the first two latent dimensions in [-span, span] ("uniform"), each decoded to its mean image."""
    if mode == "uniform":
        return uniform_images(model, label, n, span)
    if mode == "random":
        return random_images(model, label, n * n, seed)
    raise CVAEError(f"mode must be uniform or random, got {mode!r}")


def save_grid(images: torch.Tensor, path: Path, nrow: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(grid_png(images, nrow=nrow, padding=1))


# ------------------------------------------------------------------ digit completion


class Completions(NamedTuple):
    """Images (H, W) in [0, 1]; completions keep the given pixels as they are."""

    given: torch.Tensor  # the input: given pixels, hidden ones at 0.5 (grey)
    baseline: torch.Tensor  # the baseline's pixel probabilities on the hidden part (zeros without one)
    samples: torch.Tensor  # (S, H, W): the CVAE's pixel probabilities, one z ~ p(z | x) each

    @property
    def spread(self) -> torch.Tensor:
        """(H, W): the standard deviation of the samples' pixel probabilities, pixel by pixel: where the
        completions disagree (0 on the given pixels; 0.5 at most)."""
        return self.samples.std(0, correction=0)


@torch.no_grad()
def complete(model: CVAE, image: torch.Tensor, *, quadrants: int, samples: int = 8, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> Completions:  # fmt: skip
    """Complete one binarized image (H, W), (1, H, W) or (1, 1, H, W) from its first `quadrants` quadrants.

    z = mu(x) + std(x) * eps under the prior p(z | x), eps ~ N(0, I) drawn here
    or given as `noise` (S, Z): a latent slider passes eps = t * direction.
    """
    c = model.config
    if c.condition != "quadrants":
        raise CVAEError("this model is not a digit-completion model (condition quadrants)")
    device = next(model.parameters()).device
    if image.numel() != c.height * c.width:
        raise CVAEError(f"expected one {c.height}x{c.width} image, got shape {tuple(image.shape)}")
    was_training = model.training
    model.eval()
    try:
        x = image.reshape(1, 1, c.height, c.width).float().to(device)
        cond = model.condition(x, None, quadrants)
        if noise is None:
            noise = torch.randn(samples, c.latent_dim, generator=generator)
        noise = noise.to(device, torch.float32)
        if noise.ndim != 2 or noise.shape[1] != c.latent_dim:
            raise CVAEError(f"noise must have shape (S, {c.latent_dim}), got {tuple(noise.shape)}")
        prior = model.prior(cond)
        z = noise if prior is None else prior.sample(noise)  # (S, Z)
        many = cond._replace(code=cond.code.expand(len(z), -1))
        probs = model.likelihood.mean(model.decode(z, many).float())  # (S, 1, H, W)
        base = model.likelihood.mean(model.baseline(cond.code).float()) if model.baseline is not None else \
            torch.zeros_like(x)  # fmt: skip
    finally:
        model.train(was_training)
    hidden = cond.scored  # (1, 1, H, W)
    given = x * (1 - hidden)
    shape = (c.height, c.width)
    return Completions(
        given=(given + 0.5 * hidden).reshape(shape).cpu(),
        baseline=(given + base * hidden).reshape(shape).cpu(),
        samples=(given + probs * hidden).reshape(-1, *shape).cpu(),
    )


def completion_png(completions: Completions, truth: torch.Tensor, *, scale: int = 4) -> bytes:
    """One row: given | truth | baseline | CVAE samples..., scaled up, with a line of captions above."""
    from PIL import Image, ImageDraw

    tiles = [completions.given, truth.reshape(completions.given.shape), completions.baseline, *completions.samples]
    h, w = completions.given.shape
    pad, top = 4, 14
    strip = Image.new("L", (len(tiles) * (w * scale + pad) + pad, h * scale + top + pad), 255)
    for i, tile in enumerate(tiles):
        array = tile.clamp(0, 1).mul(255).round().byte().numpy()
        picture = Image.fromarray(255 - array).resize((w * scale, h * scale), Image.NEAREST)  # dark ink on white
        strip.paste(picture, (pad + i * (w * scale + pad), top))
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(["given", "truth", "baseline", "CVAE samples ->"]):
        draw.text((pad + i * (w * scale + pad), 1), text, fill=0)
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def completion_sheet(model: CVAE, images: torch.Tensor, indices: Sequence[int], *, quadrants: int, samples: int = 8,
                     seed: int = 0) -> bytes:  # fmt: skip
    """PNG: one `completion_png` row per test image index, stacked; the draws seeded per row."""
    from PIL import Image

    rows = []
    for i, index in enumerate(indices):
        gen = torch.Generator().manual_seed(seed + i)
        done = complete(model, images[index], quadrants=quadrants, samples=samples, generator=gen)
        rows.append(Image.open(io.BytesIO(completion_png(done, images[index]))))
    sheet = Image.new("L", (rows[0].width, sum(r.height for r in rows)), 255)
    for j, row in enumerate(rows):
        sheet.paste(row, (0, j * rows[0].height))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def given_text(k: int) -> str:
    """The given quadrants in words: 'bottom-left quadrant', 'bottom-left, top-left quadrants'."""
    return ", ".join(QUADRANT_ORDER[:k]) + (" quadrant" if k == 1 else " quadrants")


def cli(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cvae.generate", description="Per-class image grids from a trained CVAE, or "
                      "a digit-completion model's completions of test digits.")  # fmt: skip
    p.add_argument("mode", choices=("uniform", "random", "completion"),
                   help="latent grid over dims 0-1, z ~ N(0, I), or completions of test digits (condition "
                        "quadrants)")  # fmt: skip
    p.add_argument("checkpoint", help="a run folder or a checkpoint file")
    p.add_argument("--out", default=None, help="output folder (completion: the PNG file) [<run>/generated or next "
                   "to the checkpoint]")  # fmt: skip
    p.add_argument("--index", default="1,7,21,42", help="completion: comma-separated test digit indices [1,7,21,42]")
    p.add_argument("--quadrants", type=int, default=None, help="completion: quadrants given [the model's; 1 for a "
                   "random-count model]")  # fmt: skip
    p.add_argument("--samples", type=int, default=8, help="completion: CVAE samples per digit [8]")
    p.add_argument("--classes", default=None, help="comma-separated class indices [all]")
    p.add_argument("--n", type=int, default=20, help="grid side: n*n images per class [20]")
    p.add_argument("--span", type=float, default=2.0, help="uniform: grid covers [-span, span] [2.0]")
    p.add_argument("--seed", type=int, default=0, help="random: seed [0]")
    args = p.parse_args(argv)
    try:
        if not 1 <= args.n <= 100 or not 0 < args.span <= 100:
            raise CVAEError("--n must be 1..100 and --span in (0, 100]")
        loaded = load_run(args.checkpoint)
        model, info = loaded.model, loaded.info
        src = Path(args.checkpoint)
        run = src if src.is_dir() else src.parent.parent if src.parent.name == "checkpoints" else src.parent
        if args.mode == "completion":
            path = Path(args.out) if args.out else run / "generated" / "completions.png"
            write_atomic(path, _completion_cli(loaded, args))
            print(path)
            return 0
        out = Path(args.out) if args.out else run / "generated"
        classes = range(info.num_classes)
        if args.classes:
            try:
                classes = [int(c) for c in args.classes.split(",")]
            except ValueError:
                raise CVAEError(f"--classes must be comma-separated integers, got {args.classes!r}") from None
            bad = [c for c in classes if not 0 <= c < info.num_classes]
            if bad:
                raise CVAEError(f"class index out of range 0..{info.num_classes - 1}: {bad[0]}")
        for c in classes:
            if args.mode == "uniform":
                images = uniform_images(model, c, args.n, args.span)
            else:
                images = random_images(model, c, args.n * args.n, args.seed)
            path = out / f"{args.mode}_class{c}_{info.class_names[c]}.png".replace("/", "_")
            save_grid(images, path, nrow=args.n)
            print(path)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write images: {err}", file=sys.stderr)
        return 2
    return 0


def _completion_cli(loaded: LoadedRun, args: object) -> bytes:
    from dataclasses import replace

    from cvae.data import load_data

    model = loaded.model
    if model.config.condition != "quadrants":
        raise CVAEError("completion needs a digit-completion run (condition quadrants)")
    if not 1 <= args.samples <= 64:
        raise CVAEError(f"--samples must be 1 to 64, got {args.samples}")
    k = args.quadrants or model.config.quadrants or 1
    data = load_data(replace(loaded.config.data, train_subset=1, test_subset=None))
    try:
        indices = [int(i) for i in args.index.split(",") if i.strip()]
    except ValueError:
        raise CVAEError(f"--index must be comma-separated integers, got {args.index!r}") from None
    bad = [i for i in indices if not 0 <= i < len(data.test_x)]
    if not indices or bad:
        raise CVAEError(f"--index must be test digits 0 to {len(data.test_x) - 1}, got {args.index!r}")
    return completion_sheet(model, data.test_x, indices, quadrants=k, samples=args.samples, seed=args.seed)


if __name__ == "__main__":
    exit_with(cli())
