"""Pictures and arrays a run saves: image grids as PNG, latent codes as .npy.

`grid_png` is the one way an image batch becomes a picture, for run folders,
the generation command and the app alike.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cvae.runs import RunDir, write_atomic, write_json
from cvae.runtime import autocast


def grid_pixels(images: torch.Tensor | np.ndarray, *, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """An image grid as 8-bit RGB pixels (H', W', 3): (N, C, H, W) in [0, 1], on white.

    torchvision's `make_grid` layout, pixel for pixel (tests/test_runtime.py compares them): `nrow` images a
    row, `padding` white pixels around each, one channel shown as grey, and a single image alone without
    padding. Written here because importing torchvision.utils brings torch's compiler with it, a second at
    every training process's start for one picture."""
    x = torch.as_tensor(images).detach().float().clamp(0, 1).cpu()
    x = x.reshape((1,) * (4 - x.dim()) + tuple(x.shape)) if x.dim() < 4 else x  # one image: (H, W) or (C, H, W)
    if x.size(1) == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    if n == 1:
        grid = x[0]
    else:
        cols = min(nrow, n)
        rows, step_y, step_x = math.ceil(n / cols), h + padding, w + padding
        grid = x.new_ones(c, rows * step_y + padding, cols * step_x + padding)
        for k in range(n):
            top, left = k // cols * step_y + padding, k % cols * step_x + padding
            grid[:, top : top + h, left : left + w] = x[k]
    return grid.mul(255).round().byte().permute(1, 2, 0).numpy()


def png_bytes(pixels: np.ndarray, *, scale: int = 1) -> bytes:
    """PNG-encode 8-bit RGB pixels; `scale` enlarges with sharp pixels. No torch: safe on any thread."""
    from PIL import Image

    picture = Image.fromarray(pixels)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(images: torch.Tensor | np.ndarray, *, nrow: int = 8, padding: int = 2, scale: int = 1) -> bytes:
    """A PNG of an image grid, (N, C, H, W) in [0, 1] on white; `scale` enlarges with sharp pixels."""
    return png_bytes(grid_pixels(images, nrow=nrow, padding=padding), scale=scale)


def save_grid(images: torch.Tensor, path: Path, *, nrow: int = 8, padding: int = 2) -> None:
    write_atomic(Path(path), grid_png(images, nrow=nrow, padding=padding))


def save_npy(array: np.ndarray, path: Path, *, parents: bool = True) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(Path(path), buffer.getvalue(), parents=parents)


def save_fixed_inputs(run: RunDir, grid_x: torch.Tensor, lat_y: torch.Tensor) -> None:
    """Once per run: the fixed test batch's picture and the latent subset's labels and indices (and the
    folders a trainer writes into: it never makes them again, see `cvae.runs.write_atomic`)."""
    run.artifacts.mkdir(parents=True, exist_ok=True)
    run.checkpoints.mkdir(exist_ok=True)
    if grid_x.numel():
        save_grid(grid_x, run.artifacts / "truth.png")
    save_npy(lat_y.cpu().numpy().astype(np.int64), run.artifacts / "latent_labels.npy")
    save_npy(np.arange(len(lat_y), dtype=np.int64), run.artifacts / "latent_index.npy")


# Every epoch keeps its decoder (the latent codes of its latent.npy are the encoder's part), so a viewer decodes
# a point of any epoch with that epoch's model even where its checkpoint was not kept. Half precision: the
# pictures it makes differ from full precision's by far less than one grey level.
DECODER_FILE = "decoder.npz"


def decoder_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The decoder's state as float16 arrays (integer buffers as they are), for `EpochArtifacts.decoder`."""
    return {name: (t.detach().to("cpu", torch.float16) if t.is_floating_point() else t.detach().cpu()).numpy()
            for name, t in model.decoder.state_dict().items()}  # fmt: skip


@dataclass(frozen=True)
class DecoderSource:
    """Where a model whose decoder is one epoch's comes from: a checkpoint, and the epoch's decoder weights to
    load over its own where the checkpoint is a later one (None: the checkpoint's own decoder)."""

    checkpoint: Path
    decoder: Path | None
    exact: bool  # False: a run from before every epoch kept its decoder, so the latest model stands in


def decoder_source(run: RunDir, epoch: int) -> DecoderSource:
    """The epoch's checkpoint where it was kept; else the latest one with the epoch's decoder weights (every
    epoch keeps them); else, for a run older than that, the latest model as it is."""
    if run.epoch_checkpoint(epoch).is_file():
        return DecoderSource(run.epoch_checkpoint(epoch), None, True)
    decoder = run.artifact(epoch, DECODER_FILE)
    if decoder.is_file():
        return DecoderSource(run.latest_checkpoint, decoder, True)
    return DecoderSource(run.latest_checkpoint, None, False)


def load_decoder(path: Path, model: torch.nn.Module, max_bytes: int = 256 << 20) -> dict[str, torch.Tensor]:
    """An epoch's decoder weights, checked name by name, shape by shape and kind by kind against `model`'s
    decoder, as a state dict for it; raises CheckpointError for a file that is not one (never unpickles)."""
    from cvae.errors import CheckpointError

    expected = model.decoder.state_dict()
    try:
        if path.stat().st_size > max_bytes:
            raise CheckpointError(f"{path.name} is larger than any decoder of this run")
        with np.load(path, allow_pickle=False) as arrays:
            if set(arrays.files) != set(expected):
                raise CheckpointError(f"{path.name} holds other weights than this run's decoder")
            state = {}
            for name, ref in expected.items():
                array = arrays[name]
                if tuple(array.shape) != tuple(ref.shape) or (array.dtype.kind == "f") != ref.is_floating_point():
                    raise CheckpointError(f"{path.name}: {name} has shape {tuple(array.shape)}, not {tuple(ref.shape)}")
                tensor = torch.from_numpy(np.array(array)).to(ref.dtype)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise CheckpointError(f"{path.name}: {name} is not finite")
                state[name] = tensor
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # missing, cut, not an npz, pickled
        raise CheckpointError(f"{path.name} cannot be read: {str(err)[:120]}") from None
    return state


@dataclass
class EpochArtifacts:
    """An epoch's reconstruction grids (as pixels) and latent means: made on the training thread by
    `epoch_artifacts`, then PNG-encoded and written by `save` on the trainer's writer thread.

    `save` runs no torch operation: a torch kernel on a second thread starts a second pool of
    compute threads, which slowed CPU training by 80% on 2 cores (measured on the quick demo).
    """

    recon_mean: np.ndarray  # grid pixels (H', W', 3) uint8
    recon_sample: np.ndarray
    latent: np.ndarray  # (n, latent_dim) float32
    decoder: dict[str, np.ndarray] | None = None  # the decoder's weights in half precision (DECODER_FILE)

    def save(self, run: RunDir, epoch: int) -> None:
        write_atomic(run.artifact(epoch, "recon_mean.png"), png_bytes(self.recon_mean), parents=False)
        write_atomic(run.artifact(epoch, "recon_sample.png"), png_bytes(self.recon_sample), parents=False)
        save_npy(self.latent, run.artifact(epoch, "latent.npy"), parents=False)
        if self.decoder is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **self.decoder)
            write_atomic(run.artifact(epoch, DECODER_FILE), buffer.getvalue(), parents=False)

    def save_live(self, run: RunDir, where: dict) -> None:
        """The pictures of an epoch in progress (`where`: its epoch, batch, batches and time), live_info.json last, so
        a reader that finds live_info.json finds the pictures it names (or newer ones)."""
        write_atomic(run.live_artifact("recon_mean.png"), png_bytes(self.recon_mean), parents=False)
        write_atomic(run.live_artifact("recon_sample.png"), png_bytes(self.recon_sample), parents=False)
        save_npy(self.latent, run.live_artifact("latent.npy"), parents=False)
        write_json(run.live_artifact("info.json"), where, parents=False)


@torch.no_grad()
def epoch_artifacts(
    model: torch.nn.Module, epoch: int, grid_x: torch.Tensor, grid_y: torch.Tensor, lat_x: torch.Tensor,
    lat_y: torch.Tensor, amp_dtype: torch.dtype | None, *, decoder: bool = True,
) -> EpochArtifacts:  # fmt: skip
    """Reconstructions of the fixed test batch (z = the posterior mean, and z ~ q) and latent means of the
    fixed subset, under the epoch's own seed in a forked RNG (the training noise is left alone)."""
    device = next(model.parameters()).device
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(epoch)
        with autocast(device, amp_dtype):
            cond = model.condition(grid_x, grid_y)  # a completion model: the given part, as in training
            post = model.encode(grid_x, cond)
            mean_out = model.decode(post.mu, cond)  # z = posterior mean
            z = post.mu + post.std * torch.randn_like(post.std)
            sample_out = model.decode(z, cond)  # z ~ q, then x ~ p(x | z, c)
        recon_mean, recon_sample = model.likelihood.mean(mean_out.float()), model.likelihood.sample(sample_out.float())
        if cond.scored is not None:  # only the hidden pixels are the model's: show the given ones as they are
            recon_mean = grid_x * (1 - cond.scored) + recon_mean * cond.scored
            recon_sample = grid_x * (1 - cond.scored) + recon_sample * cond.scored
        recon_mean, recon_sample = grid_pixels(recon_mean), grid_pixels(recon_sample)
        mus = []
        for start in range(0, len(lat_x), 1000):
            with autocast(device, amp_dtype):
                xs, ys = lat_x[start : start + 1000], lat_y[start : start + 1000]
                mus.append(model.encode(xs, model.condition(xs, ys)).mu.float())
    model.train()
    latent = torch.cat(mus).cpu().numpy() if mus else np.zeros((0, model.config.latent_dim), np.float32)
    return EpochArtifacts(
        recon_mean, recon_sample, latent.astype(np.float32), decoder_arrays(model) if decoder else None
    )
