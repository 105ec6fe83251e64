"""Pictures and arrays a run saves: image grids as PNG, latent codes as .npy.

`grid_png` is the one way an image batch becomes a picture, for run folders,
the generation command and the app alike.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from cvae.runs import RunDir, write_atomic
from cvae.runtime import autocast


def grid_png(images: torch.Tensor | np.ndarray, *, nrow: int = 8, padding: int = 2, scale: int = 1) -> bytes:
    """A PNG of an image grid, (N, C, H, W) in [0, 1] on white; `scale` enlarges with sharp pixels."""
    from PIL import Image
    from torchvision.utils import make_grid

    images = torch.as_tensor(images).detach().float().clamp(0, 1).cpu()
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)  # (3, H', W')
    picture = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def save_grid(images: torch.Tensor, path: Path, *, nrow: int = 8, padding: int = 2) -> None:
    write_atomic(Path(path), grid_png(images, nrow=nrow, padding=padding))


def save_npy(array: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(Path(path), buffer.getvalue())


def save_fixed_inputs(run: RunDir, grid_x: torch.Tensor, lat_y: torch.Tensor) -> None:
    """Once per run: the fixed test batch's picture and the latent subset's labels and indices."""
    run.artifacts.mkdir(parents=True, exist_ok=True)
    if grid_x.numel():
        save_grid(grid_x, run.artifacts / "truth.png")
    save_npy(lat_y.cpu().numpy().astype(np.int64), run.artifacts / "latent_labels.npy")
    save_npy(np.arange(len(lat_y), dtype=np.int64), run.artifacts / "latent_index.npy")


@torch.no_grad()
def write_epoch_artifacts(
    model: torch.nn.Module, run: RunDir, epoch: int, grid_x: torch.Tensor, grid_y: torch.Tensor,
    lat_x: torch.Tensor, lat_y: torch.Tensor, amp_dtype: torch.dtype | None,
) -> None:  # fmt: skip
    """Reconstruction grids of the fixed test batch and latent means of the fixed subset."""
    device = next(model.parameters()).device
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(epoch)
        with autocast(device, amp_dtype):
            post = model.encode(grid_x, grid_y)
            mean_out = model.decode(post.mu, grid_y)  # z = posterior mean
            z = post.mu + post.std * torch.randn_like(post.std)
            sample_out = model.decode(z, grid_y)  # z ~ q, then x ~ p(x | z, y)
        save_grid(model.likelihood.mean(mean_out.float()), run.artifact(epoch, "recon_mean.png"))
        save_grid(model.likelihood.sample(sample_out.float()), run.artifact(epoch, "recon_sample.png"))
        mus = []
        for start in range(0, len(lat_x), 1000):
            with autocast(device, amp_dtype):
                mus.append(model.encode(lat_x[start : start + 1000], lat_y[start : start + 1000]).mu.float().cpu())
    latents = torch.cat(mus).numpy().astype(np.float32) if mus else np.zeros((0, model.config.latent_dim), np.float32)
    save_npy(latents, run.artifact(epoch, "latent.npy"))
    model.train()
