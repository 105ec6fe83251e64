"""Files that users upload: a checkpoint to explore, a picture to restyle.

Both are size-limited (the uploader's limit, and Streamlit's server.maxUploadSize
behind it) and checked before use. A checkpoint is written to a private temporary
folder under its SHA-256 and loaded only through cvae.runs.load_checkpoint
(weights-only: no code in it can run); its config is checked on PyTorch's "meta"
device (cvae.generate.checked_config) before any real memory is allocated, so a file claiming a gigantic
network is refused instead of exhausting the server.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from cvae.checkpoints import load_checkpoint
from cvae.errors import CVAEError
from cvae.generate import checked_config
from cvae.model import CVAE
from cvae.runs import write_atomic
from ui.models import cached_model
from ui.runs import stamp

MAX_CHECKPOINT_MB = 50  # the MLP demo is ~5 MB, the reference conv model ~15 MB
MAX_IMAGE_MB = 5
MAX_PARAMETERS = 50_000_000  # about 200 MB of float32 weights
MAX_PIXELS = 3 * 256 * 256  # per generated image: channels × height × width
MAX_PICTURE_PIXELS = 25_000_000  # refuse decompression bombs before decoding
KEEP_UPLOADS = 20  # the folder keeps the newest uploads only


def uploads_dir() -> Path:
    folder = Path(os.environ.get("CVAE_UPLOADS_DIR") or Path(tempfile.gettempdir()) / "cvae-uploads")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def check_checkpoint(path: Path) -> str | None:
    """Why the checkpoint at `path` must not be loaded, or None. Raises CVAEError for unreadable files."""
    payload = load_checkpoint(path)  # weights-only; one-line CheckpointError for corrupt or hostile files
    try:
        config, _ = checked_config(payload, MAX_PARAMETERS)  # sized on the meta device: no memory allocated
    except CVAEError as err:
        return str(err).removeprefix("the checkpoint's ")
    m = config.model
    if m.channels * m.height * m.width > MAX_PIXELS:
        return f"its images are {m.channels}×{m.height}×{m.width}, larger than this server generates"
    return None


def save_upload(data: bytes, suffix: str) -> Path:
    """The upload on disk under its hash (the same file twice is one file); old uploads pruned."""
    folder = uploads_dir()
    path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.is_file():
        write_atomic(path, data)
    old = sorted(folder.glob("*" + suffix), key=lambda p: stamp(p)[0], reverse=True)[KEEP_UPLOADS:]
    for stale in old:
        stale.unlink(missing_ok=True)
    return path


def uploaded_model() -> tuple[Path, CVAE, int, list[str], str] | None:
    """Uploader for a checkpoint; (path, model, epoch, class names, name) once one is loaded, else None."""
    file = st.file_uploader(
        f"A checkpoint (.pt, at most {MAX_CHECKPOINT_MB} MB)", type=["pt"], key="upload_ckpt",
        max_upload_size=MAX_CHECKPOINT_MB,
        help="latest.pt or epoch_NNNN.pt from a run folder, or the Generate page's download.",
    )  # fmt: skip
    if file is None:
        st.info("Upload a checkpoint trained with cvae to explore it here. Nothing in it is run as code.")
        return None
    name = Path(file.name).name[:80]
    data = file.getvalue()
    if len(data) > MAX_CHECKPOINT_MB << 20:
        st.error(f"{name} is larger than {MAX_CHECKPOINT_MB} MB.")
        return None
    try:
        path = save_upload(data, ".pt")
        problem = check_checkpoint(path)
        if problem is None:
            net, epoch = cached_model(str(path), stamp(path))
    except CVAEError as err:
        st.error(f"Cannot use {name}: " + str(err).replace(str(path), "the file").split(": ", 1)[-1])
        return None
    except OSError as err:
        st.error(f"Cannot store {name} on the server: {err.strerror or err}.")
        return None
    if problem is not None:
        st.error(f"Cannot use {name}: {problem}.")
        return None
    info = load_checkpoint(path).get("dataset_info") or {}
    names = [str(c) for c in info.get("class_names", [])][: net.config.num_classes]
    return path, net, epoch, names or [str(i) for i in range(net.config.num_classes)], name


def picture_for(channels: int, height: int, width: int, data: bytes, invert: bool = False) -> np.ndarray:
    """An uploaded picture as (C, H, W) float32 in [0, 1], in the model's channels and size; raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_MB << 20:
        raise ValueError(f"the picture is larger than {MAX_IMAGE_MB} MB")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            if picture.width * picture.height > MAX_PICTURE_PIXELS:
                raise ValueError(f"the picture has {picture.width}×{picture.height} pixels: too many")
            picture = picture.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.LANCZOS)
    except Image.DecompressionBombError as err:
        raise ValueError("the picture claims too many pixels (a decompression bomb?)") from err
    except UnidentifiedImageError as err:
        raise ValueError("this is not a picture Pillow can read (PNG, JPEG, …)") from err
    except OSError as err:
        raise ValueError(f"the picture is damaged ({str(err)[:100]})") from err
    array = np.asarray(picture, dtype=np.float32).reshape(height, width, channels).transpose(2, 0, 1) / 255.0
    return 1.0 - array if invert else array
