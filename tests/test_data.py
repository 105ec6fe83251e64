"""Real MNIST from the shipped files; image folders written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvae.config import DataConfig
from cvae.data import load_data, load_image_folder
from cvae.errors import DataError


def test_mnist_loads_offline_from_the_shipped_files() -> None:
    data = load_data(DataConfig(dataset="MNIST"))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_x.min() >= 0 and data.train_x.max() <= 1
    counts = torch.bincount(data.train_y).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # shared/data/README.md
    assert data.info.num_classes == 10 and data.info.channels == 1


def test_static_binarization_is_the_reference_threshold() -> None:
    grey = load_data(DataConfig(dataset="MNIST", test_subset=100, train_subset=100))
    binary = load_data(DataConfig(dataset="MNIST", binarize="static", test_subset=100, train_subset=100))
    assert set(binary.train_x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary.test_x, (grey.test_x >= 0.5).float())


def test_dynamic_binarization_keeps_grey_train_and_fixed_binary_test() -> None:
    a = load_data(DataConfig(dataset="MNIST", binarize="dynamic", test_subset=200, train_subset=10))
    b = load_data(DataConfig(dataset="MNIST", binarize="dynamic", test_subset=200, train_subset=10))
    assert len(a.train_x.unique()) > 2  # the trainer samples each batch
    assert set(a.test_x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.test_x, b.test_x)


def test_mnist_comes_from_the_package_or_a_data_folders_own_copy(tmp_path: Path, monkeypatch) -> None:
    import shutil

    import cvae.data

    assert cvae.data.mnist_dir(tmp_path) == cvae.data.PACKAGED_MNIST  # an empty data folder: the package's copy
    typo = DataConfig(dataset="MNIST", data_dir=str(tmp_path / "dta"))  # a folder that is not there: refused
    for read in (load_data, cvae.data.peek_info):
        with pytest.raises(DataError, match="data folder .*dta not found"):
            read(typo)
    own = tmp_path / "own" / "MNIST" / "raw"
    own.mkdir(parents=True)
    for path in cvae.data.PACKAGED_MNIST.glob("*.gz"):
        shutil.copy(path, own)
    assert cvae.data.mnist_dir(tmp_path / "own") == own
    (own / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")  # a broken copy of one's own: one line
    with pytest.raises(DataError, match="cannot read MNIST file"):
        load_data(DataConfig(dataset="MNIST", data_dir=str(tmp_path / "own")))
    monkeypatch.setattr(cvae.data, "PACKAGED_MNIST", tmp_path / "gone")  # and neither copy: one clear line
    with pytest.raises(DataError, match="not found"):
        load_data(DataConfig(dataset="MNIST", data_dir=str(tmp_path)))


def test_offline_cifar_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_data(DataConfig(dataset="CIFAR10", data_dir=str(tmp_path)))


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_data(DataConfig(dataset="ImageNet"))


def write_folder(root: Path, classes: dict[str, int], size=(12, 10), mode="RGB") -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")


def test_image_folder_with_held_out_split(tmp_path: Path) -> None:
    write_folder(tmp_path / "pets", {"cat": 12, "dog": 8})
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path / "pets", test_fraction=0.25)
    assert data.info.class_names == ("cat", "dog") and data.info.channels == 3
    assert (data.info.height, data.info.width) == (10, 12)
    assert len(data.train_x) == 15 and len(data.test_x) == 5
    again = load_image_folder(tmp_path / "pets", test_fraction=0.25)
    assert torch.equal(again.test_x, data.test_x)  # fixed seed


def test_image_folder_with_splits_resize_and_grey(tmp_path: Path) -> None:
    write_folder(tmp_path / "d" / "train", {"a": 3, "b": 3}, size=(20, 20), mode="L")
    write_folder(tmp_path / "d" / "test", {"a": 2, "b": 1}, size=(9, 7), mode="RGB")  # mixed sizes and modes
    data = load_data(DataConfig(dataset=str(tmp_path / "d"), image_size=16, data_dir=str(tmp_path / "cache")))
    assert data.train_x.shape == (6, 1, 16, 16) and data.test_x.shape == (3, 1, 16, 16)
    assert data.test_y.tolist() == [0, 0, 1]
    cached = load_data(DataConfig(dataset=str(tmp_path / "d"), image_size=16, data_dir=str(tmp_path / "cache")))
    assert torch.equal(cached.train_x, data.train_x)


def test_empty_class_folder_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", {"a": 3})
    (tmp_path / "d" / "b").mkdir()
    with pytest.raises(DataError, match="has no images"):
        load_image_folder(tmp_path / "d")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", {"a": 3, "b": 3})
    (tmp_path / "d" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path / "d")


def test_corrupt_local_cifar_copy_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read CIFAR-10"):
        load_data(DataConfig(dataset="CIFAR10", data_dir=str(tmp_path)))
