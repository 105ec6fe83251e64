"""Generation from a trained CVAE: the reference's per-class 20x20 grids, and more.

    python -m cvae.generate uniform checkpoints/<run>            # one PNG per class
    python -m cvae.generate random  checkpoints/<run> --seed 3

`uniform`: a 20x20 grid over the first two latent dimensions (others at 0),
evenly spaced in [-span, span]; `random`: 400 codes z ~ N(0, I). Each code is
decoded under the chosen class into its mean image E[x | z, y].
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from cvae.artifacts import grid_png
from cvae.checkpoints import MAX_PARAMETERS, checked_config, load_checkpoint, state_dict_problem  # noqa: F401
from cvae.cli import OneLineParser
from cvae.config import RunConfig
from cvae.data import DatasetInfo
from cvae.errors import CheckpointError, CVAEError
from cvae.model import CVAE

# MAX_PARAMETERS and checked_config moved to cvae.checkpoints (every path that builds a model from a
# file sizes it on the meta device there); they stay importable from here for the app.


class LoadedModel(NamedTuple):
    """A trained model and what it was trained with."""

    model: CVAE  # in eval mode
    config: RunConfig
    info: DatasetInfo  # shapes and class names of its data
    checkpoint: dict  # the checkpoint's payload (epoch, metrics, ...)


def load_model(path: Path | str, device: torch.device | str = "cpu") -> LoadedModel:
    """A model in eval mode from a run folder or checkpoint file, loaded weights-only and checked."""
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
    return LoadedModel(model.to(device).eval(), config, info, payload)


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


def cli(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cvae.generate", description="Per-class image grids from a trained CVAE.")
    p.add_argument("mode", choices=("uniform", "random"), help="latent grid over dims 0-1, or z ~ N(0, I)")
    p.add_argument("checkpoint", help="a run folder or a checkpoint file")
    p.add_argument("--out", default=None, help="output folder [<run>/generated or next to the checkpoint]")
    p.add_argument("--classes", default=None, help="comma-separated class indices [all]")
    p.add_argument("--n", type=int, default=20, help="grid side: n*n images per class [20]")
    p.add_argument("--span", type=float, default=2.0, help="uniform: grid covers [-span, span] [2.0]")
    p.add_argument("--seed", type=int, default=0, help="random: seed [0]")
    args = p.parse_args(argv)
    try:
        if not 1 <= args.n <= 100 or not 0 < args.span <= 100:
            raise CVAEError("--n must be 1..100 and --span in (0, 100]")
        model, _, info, _ = load_model(args.checkpoint)
        src = Path(args.checkpoint)
        run = src if src.is_dir() else src.parent.parent if src.parent.name == "checkpoints" else src.parent
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


if __name__ == "__main__":
    sys.exit(cli())
