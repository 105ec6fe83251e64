"""Datasets -> in-memory float tensors in [0, 1] plus a `DatasetInfo`.

Three sources, one result (`ImageData`):

- MNIST from the IDX files shipped in the package, cvae/mnist (or a data folder's MNIST/raw); no
  download is ever attempted.
- CIFAR-10 from a local `cifar-10-batches-py` folder, downloaded there through
  torchvision on first use when online.
- A user's image folder: one sub-folder per class, optionally under train/ and
  test/; otherwise a held-out split is drawn with a fixed seed.

Everything is decoded once into tensors, so the training loop only indexes.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import socket
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvae.config import DataConfig
from cvae.errors import DataError

# MNIST ships inside the package (cvae/mnist, see its README), so it trains offline wherever cvae is installed.
PACKAGED_MNIST = Path(__file__).resolve().parent / "mnist"
# The data folder (CIFAR-10, the image-folder cache): a checkout's own data/ when cvae runs from one
# (streamlit_app.py beside the package), else data/ in the current folder, as checkpoints/ is for runs.
_CHECKOUT = Path(__file__).resolve().parent.parent
PROJECT_DATA_DIR = _CHECKOUT / "data" if (_CHECKOUT / "streamlit_app.py").is_file() else Path("data")
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_FOLDER_IMAGES = 500_000
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own limit (1024 * 1024 * 1024 // 4 // 3), if it is switched off


@dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about the data: shapes and class names."""

    name: str
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> DatasetInfo:
        return cls(
            name=str(raw["name"]),
            channels=int(raw["channels"]),
            height=int(raw["height"]),
            width=int(raw["width"]),
            class_names=tuple(str(c) for c in raw["class_names"]),
        )


@dataclass
class ImageData:
    """Train and test images, (N, C, H, W) float32 in [0, 1], and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DatasetInfo


def resolve_data_dir(data_dir: str) -> Path:
    if data_dir:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("CVAE_DATA_DIR", PROJECT_DATA_DIR))


def _check_mnist_dir(config: DataConfig) -> None:
    """MNIST comes from the data folder's MNIST/raw when it holds a copy, else from the package's. A folder named
    on purpose that does not exist is refused rather than passed over: a typo in --data-dir would otherwise
    train on the package's MNIST without a word. (For an image folder the data folder only holds a cache and
    is made when missing; CIFAR-10 says where it looked.)"""
    path = resolve_data_dir(config.data_dir)
    if config.data_dir and not path.is_dir():
        raise DataError(f"data folder {path} not found (named by --data-dir or by the run's config)")


def builtin_info(dataset: str) -> DatasetInfo | None:
    """The shapes of a built-in dataset without loading it (None for an image folder)."""
    name = dataset.strip().upper().replace("-", "")
    if name == "MNIST":
        return DatasetInfo("MNIST", 1, 28, 28, MNIST_CLASSES)
    if name == "CIFAR10":
        return DatasetInfo("CIFAR10", 3, 32, 32, CIFAR10_CLASSES)
    return None


def peek_info(config: DataConfig) -> DatasetInfo:
    """The `DatasetInfo` that `load_data(config)` would give, cheaply: no pixel is decoded, nothing cached.

    MNIST and CIFAR-10 have fixed shapes; an image folder is scanned for its
    classes and its first image's mode and size are read from the file's
    header. The trainer checks the model against this before loading, so a
    refused data set (an RGB folder for the Bernoulli decoder) costs nothing.
    """
    config.validate()
    name = config.dataset.strip()
    if name.upper() == "MNIST":
        _check_mnist_dir(config)
        return DatasetInfo("MNIST", 1, 28, 28, MNIST_CLASSES)
    if name.upper().replace("-", "") == "CIFAR10":
        return DatasetInfo("CIFAR10", 3, 32, 32, CIFAR10_CLASSES)
    if not Path(name).expanduser().is_dir():
        raise DataError(f"unknown dataset {name!r}: use MNIST, CIFAR10 or the path of an existing image folder")
    plan = _plan_folder(Path(name).expanduser(), config.image_size, config.test_fraction, config.split_seed)
    return plan.info


BUILTIN_SIZES = {"MNIST": (60_000, 10_000), "CIFAR10": (50_000, 10_000)}  # (train, test) images


def peek_sizes(config: DataConfig) -> tuple[int, int]:
    """How many train and test images `load_data(config)` would give, subsets applied, without decoding any."""
    info = builtin_info(config.dataset)
    if info is not None:
        sizes = BUILTIN_SIZES[info.name]
    else:
        plan = _plan_folder(Path(config.dataset.strip()).expanduser(), config.image_size, config.test_fraction,
                            config.split_seed)  # fmt: skip
        sizes = (len(plan.train_items), len(plan.test_items))
    train, test = sizes
    return min(train, config.train_subset or train), min(test, config.test_subset or test)


_KEPT: dict[DataConfig, ImageData] = {}  # loaded once and shared: see keep_loaded


def keep_loaded(config: DataConfig) -> None:
    """Load `config`'s data now and hand these very tensors to every later `load_data(config)` in this process
    (and in processes forked from it, which share them copy-on-write: cvae.forkserver). Training only reads
    them."""
    _KEPT[config] = load_data(config)


def load_data(config: DataConfig) -> ImageData:
    """Load, subset and binarize the dataset a `DataConfig` names."""
    if config in _KEPT:
        return dataclasses.replace(_KEPT[config])
    config.validate()
    root = resolve_data_dir(config.data_dir)
    name = config.dataset.strip()
    if name.upper() == "MNIST":
        _check_mnist_dir(config)
        data = load_mnist(root)
    elif name.upper().replace("-", "") == "CIFAR10":
        data = load_cifar10(root)
    elif Path(name).expanduser().is_dir():
        data = load_image_folder(
            Path(name).expanduser(),
            image_size=config.image_size,
            test_fraction=config.test_fraction,
            split_seed=config.split_seed,
            cache_dir=root / "cache",
        )
    else:
        raise DataError(f"unknown dataset {name!r}: use MNIST, CIFAR10 or the path of an existing image folder")
    if config.train_subset:
        data.train_x, data.train_y = data.train_x[: config.train_subset], data.train_y[: config.train_subset]
    if config.test_subset:
        data.test_x, data.test_y = data.test_x[: config.test_subset], data.test_y[: config.test_subset]
    return binarize(data, config.binarize)


def binarize(data: ImageData, mode: str, seed: int = 0) -> ImageData:
    """Static: pixel >= 0.5 -> 1 (the reference), train and test alike.

    Dynamic: the training images stay grey and the trainer draws x ~
    Bernoulli(pixel) for every batch; the test set is drawn once, with a fixed
    seed, so that test numbers are comparable across epochs and runs.
    """
    if mode == "static":
        data.train_x = (data.train_x >= 0.5).float()
        data.test_x = (data.test_x >= 0.5).float()
    elif mode == "dynamic":
        gen = torch.Generator().manual_seed(seed)
        data.test_x = torch.bernoulli(data.test_x, generator=gen)
    return data


# --------------------------------------------------------------------- MNIST


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or raw) into a uint8 array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 3:
            raise ValueError("not a uint8 IDX file")
        shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return body.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise DataError(f"cannot read MNIST file {path}: {err}") from None


def _find_mnist_file(raw_dir: Path, stem: str) -> Path:
    for candidate in (raw_dir / f"{stem}.gz", raw_dir / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"MNIST file {stem}(.gz) not found in {raw_dir}; cvae ships it in {PACKAGED_MNIST} "
        "(reinstall cvae, or pass --data-dir to a folder holding MNIST/raw)"
    )


def mnist_dir(root: Path) -> Path:
    """Where the MNIST files are read from: `root`/MNIST/raw when it holds them (a copy of your own, as
    torchvision leaves it), else the copy inside the package."""
    own = root / "MNIST" / "raw"
    return own if any(own.glob("train-images-idx3-ubyte*")) else PACKAGED_MNIST


def load_mnist(root: Path) -> ImageData:
    raw_dir = mnist_dir(root)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find_mnist_file(raw_dir, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_mnist_file(raw_dir, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"MNIST {split} files in {raw_dir} do not match each other")
        if labels.max() > 9:
            raise DataError(f"MNIST {split} labels in {raw_dir} are out of range")
        arrays[split] = (_to_float(images[:, None]), torch.from_numpy(labels.astype(np.int64, copy=True)))
    h, w = arrays["train"][0].shape[-2:]
    info = DatasetInfo("MNIST", 1, h, w, MNIST_CLASSES)
    return ImageData(*arrays["train"], *arrays["test"], info)


def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], once for the whole set."""
    return torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)


# ------------------------------------------------------------------ CIFAR-10


def load_cifar10(root: Path) -> ImageData:
    import torchvision

    folder = root / "cifar-10-batches-py"
    if not folder.is_dir():
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
        except Exception as err:  # noqa: BLE001 - any failure means "not available"
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(
                f"CIFAR-10 not found in {folder} and the download failed ({reason}); "
                "get cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                f"and unpack it into {root}, or pass -d PATH to an image folder"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    arrays = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=False)
        except Exception as err:  # noqa: BLE001 - corrupt or partial copies
            raise DataError(f"cannot read CIFAR-10 in {folder}: {err}") from None
        images = np.asarray(ds.data).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        arrays += [_to_float(images), torch.tensor(ds.targets, dtype=torch.int64)]
    return ImageData(*arrays, DatasetInfo("CIFAR10", 3, 32, 32, CIFAR10_CLASSES))


# -------------------------------------------------------------- image folder


def _class_dirs(root: Path) -> list[Path]:
    """The class sub-folders; a linked one that leads back into the image folder (or above it), or to the same
    folder as another class, would silently repeat other classes' pictures as a class of its own: refused."""
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    top, seen = root.resolve(), {}
    for folder in found:
        real = folder.resolve()
        if folder.is_symlink() and (real == top or real in top.parents or top in real.parents):
            raise DataError(f"class folder {folder} is a link to {real}, inside or above the image folder: its "
                            "pictures would be counted twice, as another class; remove the link")  # fmt: skip
        if real in seen:
            raise DataError(f"class folders {seen[real].name} and {folder.name} are the same folder ({real}): "
                            "remove the link")  # fmt: skip
        seen[real] = folder
    return found


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _scan(root: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    items = []
    for label, name in enumerate(class_names):
        files = _image_files(root / name)
        if not files:
            raise DataError(f"class folder {root / name} has no images")
        items += [(f, label) for f in files]
    return items


def max_image_pixels() -> int:
    """Pillow's decompression-bomb limit (pixels per image), or its default if someone switched it off."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_IMAGE_PIXELS


@contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """`PIL.Image.open`, with a picture over the pixel limit a one-line `DataError`, wherever it is.

    Pillow only warns between 1x and 2x its limit and raises its own error
    above; both become the same DataError here, checked from the header
    before a single pixel is decoded.
    """
    from PIL import Image

    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, for every image
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise DataError(f"image {path} has more than {limit:,} pixels (a decompression bomb?)") from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    with im:
        width, height = im.size
        if width * height > limit:
            raise DataError(f"image {path} has {width}x{height} pixels, more than {limit:,} (a decompression bomb?)")
        yield im


@dataclass
class _FolderPlan:
    root: Path
    class_names: list[str]
    train_items: list[tuple[Path, int]]
    test_items: list[tuple[Path, int]]
    mode: str  # "L" or "RGB"
    size: tuple[int, int]  # (W, H)

    @property
    def info(self) -> DatasetInfo:
        channels = 1 if self.mode == "L" else 3
        return DatasetInfo(self.root.name, channels, self.size[1], self.size[0], tuple(self.class_names))


def _plan_folder(root: Path, image_size: int | None, test_fraction: float, split_seed: int) -> _FolderPlan:
    """Classes, the train/test split, and the mode and size every image will be converted to (from the first)."""
    root = root.resolve()
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / "train" if split_dirs else root
    class_names = [p.name for p in _class_dirs(base)]
    if len(class_names) < 2:
        raise DataError(f"image folder {base} needs at least two class sub-folders, found {len(class_names)}")
    train_items = _scan(base, class_names)
    if split_dirs:
        missing = [c for c in class_names if not (root / "test" / c).is_dir()]
        if missing:
            raise DataError(f"{root / 'test'} lacks class folder(s): {', '.join(missing)}")
        test_items = _scan(root / "test", class_names)
    else:
        order = torch.randperm(len(train_items), generator=torch.Generator().manual_seed(split_seed))
        n_test = max(1, int(round(len(train_items) * test_fraction)))
        test_items = [train_items[i] for i in order[:n_test].tolist()]
        train_items = [train_items[i] for i in order[n_test:].tolist()]
    if len(train_items) + len(test_items) > MAX_FOLDER_IMAGES:
        raise DataError(f"image folder {root} has more than {MAX_FOLDER_IMAGES} images")

    first = train_items[0][0]
    with open_image(first) as im:
        mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
        size = (image_size, image_size) if image_size else im.size  # (W, H)
    if size[0] > 512 or size[1] > 512:
        raise DataError(f"images of {size[0]}x{size[1]} are too large; pass --image-size 64 or less")
    return _FolderPlan(root, class_names, train_items, test_items, mode, size)


def load_image_folder(
    root: Path,
    *,
    image_size: int | None = None,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    cache_dir: Path | None = None,
) -> ImageData:
    """Read ROOT/<class>/*.png (or ROOT/train/<class>, ROOT/test/<class>) into tensors.

    Images are converted to greyscale if the first one is greyscale, else RGB,
    and resized to `image_size` squared (default: the first image's size).
    """
    from PIL import Image

    plan = _plan_folder(root, image_size, test_fraction, split_seed)
    root, train_items, test_items = plan.root, plan.train_items, plan.test_items
    mode, size = plan.mode, plan.size

    stats = [(str(p), st.st_mtime_ns, st.st_size) for p, _ in train_items + test_items for st in [p.stat()]]
    key = hashlib.sha256(repr((str(root), mode, size, test_fraction, split_seed, stats)).encode()).hexdigest()[:16]
    cache = cache_dir / f"folder-{key}.pt" if cache_dir else None
    if cache and cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            info = DatasetInfo.from_dict(saved["info"])
            return ImageData(
                _u8_to_float(saved["train_x"]), saved["train_y"],
                _u8_to_float(saved["test_x"]), saved["test_y"], info,
            )  # fmt: skip
        except Exception:  # noqa: BLE001 - a bad cache is rebuilt, never trusted
            pass

    def read(items: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = np.empty((len(items), size[1], size[0], 1 if mode == "L" else 3), np.uint8)
        for i, (path, _) in enumerate(items):
            with open_image(path) as im:
                try:
                    im = im.convert(mode)
                    if im.size != size:
                        im = im.resize(size, Image.Resampling.BILINEAR)
                    arrays[i] = np.asarray(im).reshape(arrays.shape[1:])
                except (OSError, ValueError) as err:
                    raise DataError(f"cannot read image {path}: {err}") from None
        images = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
        return images, torch.tensor([label for _, label in items], dtype=torch.int64)

    train_x, train_y = read(train_items)
    test_x, test_y = read(test_items)
    info = plan.info
    if cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, info=info.to_dict()), tmp)  # fmt: skip
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only data folder just means no cache
    return ImageData(_u8_to_float(train_x), train_y, _u8_to_float(test_x), test_y, info)


def _u8_to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)
