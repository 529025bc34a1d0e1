"""Data loading on small generated ImageFolders and on the embedded Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compressor.core.config import DataConfig
from compressor.core.data import load_data, read_idx
from compressor.errors import DataError
from tests.conftest import make_image_folder, needs_fmnist


def folder_cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig.model_validate({"source": "imagefolder", "path": str(root),
                                      "preprocess": {"resize": 16, "channels": 3}, **kw})


def test_image_folder_loads_with_shapes(tmp_path: Path) -> None:
    data = load_data(folder_cfg(make_image_folder(tmp_path)), seed=0)
    assert data.classes == ["class_0", "class_1", "class_2"]
    assert len(data.train) == 24 and len(data.val) == 24
    x, y = data.train[0]
    assert tuple(x.shape) == (3, 16, 16) and y == 0
    images, labels = data.val_arrays()
    assert images.shape == (24, 3, 16, 16) and images.dtype == np.float32
    assert sorted(set(labels.tolist())) == [0, 1, 2]


def test_undecodable_image_is_skipped_and_counted(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path)
    (root / "train/class_1/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = root / "train/class_2/truncated.png"
    full = (root / "train/class_2/img_0.png").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    data = load_data(folder_cfg(root), seed=0)
    assert len(data.train) == 24
    skipped = {Path(s["file"]).name for s in data.skipped}
    assert skipped == {"broken.jpg", "truncated.png"}
    assert data.describe()["skipped_images"] == 2


def test_empty_class_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path)
    (root / "train/class_empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/class_empty has no readable images"):
        load_data(folder_cfg(root), seed=0)


def test_val_class_missing_from_train(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path)
    extra = root / "val/class_9"
    extra.mkdir()
    Image.new("RGB", (8, 8)).save(extra / "a.png")
    with pytest.raises(DataError, match=r"class folder\(s\) class_9 that the training split"):
        load_data(folder_cfg(root), seed=0)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data folder .*nowhere does not exist"):
        load_data(folder_cfg(tmp_path / "nowhere"), seed=0)


def test_missing_val_is_split_from_train_with_seed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, per_class=10, val=False)
    a = load_data(folder_cfg(root, val_fraction=0.2), seed=1)
    b = load_data(folder_cfg(root, val_fraction=0.2), seed=1)
    assert len(a.val) == 6 and len(a.train) == 24
    assert [p for p, _ in a.val.samples] == [p for p, _ in b.val.samples]  # type: ignore[attr-defined]


def test_greyscale_and_rgba_mix_converted(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path)
    Image.new("L", (20, 20), 128).save(root / "train/class_0/grey.png")
    Image.new("RGBA", (20, 20), (10, 20, 30, 40)).save(root / "train/class_0/rgba.png")
    for channels in (1, 3):
        cfg = DataConfig.model_validate({"source": "imagefolder", "path": str(root), "preprocess": {
            "resize": 16, "channels": channels, "mean": [0.5], "std": [0.5]}})
        data = load_data(cfg, seed=0)
        shapes = {tuple(data.train_eval[i][0].shape) for i in range(len(data.train_eval))}
        assert shapes == {(channels, 16, 16)}


def test_imagefolder_needs_a_size(tmp_path: Path) -> None:
    cfg = DataConfig.model_validate({"source": "imagefolder", "path": str(make_image_folder(tmp_path)),
                                     "preprocess": {"channels": 3}})
    with pytest.raises(DataError, match="resize or data.preprocess.crop is required"):
        load_data(cfg, seed=0)


def test_idx_reader_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(bad)


@needs_fmnist
def test_fashion_mnist_subset_per_class() -> None:
    cfg = DataConfig.model_validate({"train_per_class": 7, "val_per_class": 3,
                                     "preprocess": {"channels": 1, "mean": [0.286], "std": [0.353]}})
    data = load_data(cfg, seed=0)
    assert len(data.train) == 70 and len(data.val) == 30
    assert data.input_shape == (1, 28, 28)
    _, labels = data.val_arrays()
    assert np.bincount(labels).tolist() == [3] * 10
    assert data.classes[0] == "T-shirt/top"
