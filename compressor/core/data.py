"""Data: the embedded Fashion-MNIST set or a user's ImageFolder tree, with recorded preprocessing."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from compressor.core.config import DataConfig, Preprocess
from compressor.core.readers import IMAGE_SUFFIXES, check_data_folder, image_problem, read_image
from compressor.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped (or plain) IDX file as written by the MNIST family of data sets."""
    if not path.exists():
        msg = (f"{path} does not exist; install the embedded data with 'apt-get install dataset-fashion-mnist' "
               "(make does this) or set data.path to the folder holding the IDX files")
        raise DataError(msg)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            msg = f"{path} is not an unsigned-byte IDX file"
            raise DataError(msg)
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, EOFError, struct.error, ValueError) as err:
        msg = f"{path} cannot be read as an IDX file ({err}); reinstall dataset-fashion-mnist"
        raise DataError(msg) from err


def _stats(pre: Preprocess, values: Sequence[float]) -> list[float]:
    return list(values) * pre.channels if len(values) == 1 else list(values)


def _to_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 CHW tensor with 1, 3 or 4 channels -> ``channels`` channels."""
    if img.shape[0] == 4:
        img = img[:3]
    if img.shape[0] == channels:
        return img
    if channels == 3:
        return img.expand(3, -1, -1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (img.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def build_transform(pre: Preprocess, size: int, train: bool, augment: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW image -> normalized float CHW tensor of ``pre.channels`` x ``size`` x ``size``."""
    from torchvision.transforms import v2

    steps: list[Any] = []
    if pre.resize is not None:
        steps.append(v2.Resize(pre.resize, antialias=True))
    steps.append(v2.CenterCrop(size))
    if train and augment:
        steps += [v2.RandomCrop(size, padding=max(1, size // 8)), v2.RandomHorizontalFlip()]
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(_stats(pre, pre.mean), _stats(pre, pre.std)),
    ]
    pipeline = v2.Compose(steps)
    channels = pre.channels
    return lambda img: pipeline(_to_channels(img, channels))


class ArrayImages(Dataset):
    """Images held in memory as a uint8 N x H x W (or N x C x H x W) array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        if self.images.ndim == 3:
            self.images = self.images.unsqueeze(1)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


class FileImages(Dataset):
    """Images read from files on demand; the list holds only files that decoded when scanned."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable[[torch.Tensor], torch.Tensor]):
        self.samples = samples
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        arr = read_image(path)  # greyscale, palette and RGBA all become RGB first
        return self.transform(torch.from_numpy(arr).permute(2, 0, 1)), label


def _per_class_subset(labels: np.ndarray, per_class: int | None, rng: np.random.Generator) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, int(round(len(idx) * fraction))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class PKBatchSampler:
    """Batches of ``p`` identities x ``k`` images each (seeded), so every anchor has positives and negatives.

    An epoch has ``len(labels) // (p * k)`` batches (at least one). Identities are drawn without
    replacement within a batch when there are at least ``p`` of them; an identity with fewer than
    ``k`` images repeats some.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int):
        self.labels = np.asarray(labels)
        self.p, self.k, self.seed = p, k, seed
        self.identities = np.unique(self.labels)

    def __len__(self) -> int:
        return max(1, len(self.labels) // (self.p * self.k))

    def __iter__(self) -> Any:
        rng = np.random.default_rng(self.seed)
        pools = {int(i): list(rng.permutation(np.flatnonzero(self.labels == i))) for i in self.identities}
        cursor = dict.fromkeys(pools, 0)
        for _ in range(len(self)):
            ids = rng.choice(self.identities, self.p, replace=len(self.identities) < self.p)
            batch: list[int] = []
            for identity in ids:
                pool, start = pools[int(identity)], cursor[int(identity)]
                batch += [int(pool[(start + j) % len(pool)]) for j in range(self.k)]
                cursor[int(identity)] = (start + self.k) % len(pool)
            yield batch


class TrainBatches(Sampler[list[int]]):
    """Training batches of ``batch_size`` indices drawn from ``sampler``, without a last batch of one image.

    BatchNorm cannot train on a batch of one image once the feature map is 1 x 1 ("Expected more than 1
    value per channel when training"), so a last batch of exactly one is dropped, as torchvision's
    reference scripts effectively do with ``drop_last``; larger last batches are kept, and so is a data
    set of one image (or ``batch_size`` 1), where nothing else is left. Evaluation is not batched here.
    """

    def __init__(self, sampler: Any, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size

    def _keeps_last(self, size: int) -> bool:
        return size > 1 or self.batch_size == 1 or len(self.sampler) == 1

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (1 if rest and self._keeps_last(rest) else 0)

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and self._keeps_last(len(batch)):
            yield batch


@dataclass
class DataModule:
    """The data of one run: splits, class names, what was skipped, and loaders."""

    config: DataConfig
    classes: list[str]
    input_size: int
    train: Dataset
    train_eval: Dataset
    val: Dataset
    seed: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    _val_cache: dict[int | None, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.config.preprocess.channels, self.input_size, self.input_size)

    def train_loader(self, batch_size: int | None = None, epoch: int = 0, sampler: Any = None,
                     pk: tuple[int, int] | None = None) -> DataLoader:
        """Shuffled training batches; ``pk`` = (P, K) gives P identities x K images per batch instead."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        if pk is not None:
            labels = self.train.labels.numpy()  # type: ignore[attr-defined]
            return DataLoader(self.train, batch_sampler=PKBatchSampler(labels, pk[0], pk[1], self.seed * 1000 + epoch),
                              num_workers=self.config.workers)
        order = sampler if sampler is not None else RandomSampler(self.train, generator=generator)  # type: ignore[arg-type]
        # the same generator as the sampler's, as DataLoader(shuffle=True, generator=...) uses it: the
        # loader draws its worker seed from it first, so orders (and the global RNG) stay as they were
        return DataLoader(self.train, batch_sampler=TrainBatches(order, batch_size or self.config.batch_size),
                          generator=generator, num_workers=self.config.workers)

    def val_loader(self, batch_size: int | None = None) -> DataLoader:
        return DataLoader(self.val, batch_size=batch_size or self.config.batch_size, shuffle=False,
                          num_workers=self.config.workers)

    def _arrays(self, ds: Dataset, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(ds)  # type: ignore[arg-type]
        count = n if limit is None else min(limit, n)
        # Evenly spaced, so a limited slice still covers every class.
        idx = np.linspace(0, n - 1, count).round().astype(int) if count < n else np.arange(n)
        xs, ys = zip(*(ds[int(i)] for i in idx), strict=True)
        return torch.stack(list(xs)).numpy(), np.asarray(ys, dtype=np.int64)

    def val_arrays(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Validation images (NCHW float32, preprocessed) and labels; ``limit`` takes an even slice."""
        if limit not in self._val_cache:
            self._val_cache[limit] = self._arrays(self.val, limit)
        return self._val_cache[limit]

    def calibration_arrays(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Training images without augmentation, for calibration (never the validation split)."""
        return self._arrays(self.train_eval, count)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.config.source,
            "path": str(self.config.path or (FASHION_MNIST_DIR if self.config.source == "fashion-mnist" else "")),
            "classes": self.classes,
            "train_images": len(self.train),  # type: ignore[arg-type]
            "val_images": len(self.val),  # type: ignore[arg-type]
            "input_shape": list(self.input_shape),
            "preprocess": self.config.preprocess.model_dump(mode="json") | {"input_size": self.input_size},
            "skipped_images": len(self.skipped),
            "skipped": self.skipped[:100],
        }


def _fashion_mnist(cfg: DataConfig, seed: int) -> DataModule:
    root = cfg.path or FASHION_MNIST_DIR
    if not root.is_dir():
        msg = (f"data folder {root} does not exist; install the embedded data with "
               "'apt-get install dataset-fashion-mnist' (make does this) or set data.path")
        raise DataError(msg)
    rng = np.random.default_rng(seed)
    x_train = read_idx(root / "train-images-idx3-ubyte.gz")
    y_train = read_idx(root / "train-labels-idx1-ubyte.gz")
    x_val = read_idx(root / "t10k-images-idx3-ubyte.gz")
    y_val = read_idx(root / "t10k-labels-idx1-ubyte.gz")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        msg = f"image and label counts differ in {root}; reinstall dataset-fashion-mnist"
        raise DataError(msg)
    tr = _per_class_subset(y_train, cfg.train_per_class, rng)
    va = _per_class_subset(y_val, cfg.val_per_class, rng)
    pre = cfg.preprocess
    size = pre.crop or pre.resize or x_train.shape[-1]
    return DataModule(
        config=cfg, classes=list(FASHION_MNIST_CLASSES), input_size=size, seed=seed,
        train=ArrayImages(x_train[tr], y_train[tr], build_transform(pre, size, True, cfg.augment)),
        train_eval=ArrayImages(x_train[tr], y_train[tr], build_transform(pre, size, False, False)),
        val=ArrayImages(x_val[va], y_val[va], build_transform(pre, size, False, False)),
    )


def scan_split(split_dir: Path, classes: list[str] | None, skipped: list[dict[str, str]],
                open_set: bool = False) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (file, label) pairs of one split. ``open_set`` (embedding models) accepts validation
    identities the training split lacks: they get labels after the training classes."""
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        msg = f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>"
        raise DataError(msg)
    names = [p.name for p in folders]
    if classes is None:
        classes = names
    else:
        extra = [n for n in names if n not in classes]
        if extra and not open_set:
            msg = (f"{split_dir} has class folder(s) {', '.join(extra)} that the training split "
                   f"{split_dir.parent / 'train'} does not have; the model cannot predict them")
            raise DataError(msg)
    index = {name: i for i, name in enumerate(classes)}
    for name in names:
        index.setdefault(name, len(index))
    samples: list[tuple[Path, int]] = []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        good = 0
        for path in files:
            reason = image_problem(path)
            if reason is None:
                samples.append((path, index[folder.name]))
                good += 1
            else:
                skipped.append({"file": str(path), "reason": reason})
        if good == 0 and split_dir.name == "train":
            msg = f"class folder {folder} has no readable images; add images or remove the folder"
            raise DataError(msg)
    return classes, samples


def _image_folder(cfg: DataConfig, seed: int, open_set: bool = False) -> DataModule:
    assert cfg.path is not None
    root = check_data_folder(cfg.path)
    train_dir = root / "train"
    pre = cfg.preprocess
    size = pre.crop or pre.resize
    if size is None:
        msg = "data.preprocess.resize or data.preprocess.crop is required for an ImageFolder (images differ in size)"
        raise DataError(msg)
    rng = np.random.default_rng(seed)
    skipped: list[dict[str, str]] = []
    classes, train_samples = scan_split(train_dir, None, skipped)
    labels = np.asarray([label for _, label in train_samples])
    if (root / "val").is_dir():
        _, val_samples = scan_split(root / "val", classes, skipped, open_set)
    else:
        tr_idx, va_idx = _stratified_split(labels, cfg.val_fraction, rng)
        val_samples = [train_samples[i] for i in va_idx]
        train_samples = [train_samples[i] for i in tr_idx]
    tr_keep = _per_class_subset(np.asarray([lab for _, lab in train_samples]), cfg.train_per_class, rng)
    va_keep = _per_class_subset(np.asarray([lab for _, lab in val_samples]), cfg.val_per_class, rng)
    train_samples = [train_samples[i] for i in tr_keep]
    val_samples = [val_samples[i] for i in va_keep]
    if not val_samples:
        msg = f"no readable validation images under {root}"
        raise DataError(msg)
    return DataModule(
        config=cfg, classes=classes, input_size=size, seed=seed, skipped=skipped,
        train=FileImages(train_samples, build_transform(pre, size, True, cfg.augment)),
        train_eval=FileImages(train_samples, build_transform(pre, size, False, False)),
        val=FileImages(val_samples, build_transform(pre, size, False, False)),
    )


def load_data(cfg: DataConfig, seed: int, open_set: bool = False) -> DataModule:
    """Build the data module a recipe describes; errors name the path at fault.

    ``open_set`` (embedding recipes): an ImageFolder's val/ may hold identities train/ lacks (labelled
    after the training classes); retrieval needs no classifier over them.
    """
    if cfg.source == "fashion-mnist":
        return _fashion_mnist(cfg, seed)
    return _image_folder(cfg, seed, open_set)
