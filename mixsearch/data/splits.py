"""The data every source ends in: its config, the in-memory splits, and how a source is split.

Train and validation images are disjoint parts of the dataset's training images, picked by a
seeded permutation; test images are the first ``test_size`` of the test images, so test accuracy
is comparable across seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mixsearch.errors import UsageError

DATASETS = ("mnist", "cifar10", "synthetic")
MNIST_SOURCES = "auto, bundled, torchvision or idx:PATH"
CIFAR10_SOURCES = "auto, torchvision or folder:PATH"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    # mnist: auto | bundled | torchvision | idx:PATH; cifar10: auto | torchvision | folder:PATH;
    # ignored for synthetic.
    source: str = "auto"
    train_size: int = 10000
    val_size: int = 2000
    test_size: int = 2500
    # Training images the train accuracy is measured on: the first of the training split, which is
    # drawn by a seeded permutation, so a fixed random sample; None: all of them. A search that does
    # not need the figure exact saves most of a forward pass over the training set per trial.
    train_eval_size: int | None = None
    seed: int = 0
    cache_dir: str = "~/.cache/mixsearch"  # torchvision root
    image_shape: tuple[int, int, int] = (1, 28, 28)  # synthetic only (C, H, W)
    num_classes: int = 10  # synthetic only

    def __post_init__(self):
        # YAML gives lists; a tuple keeps the config hashable and comparable.
        object.__setattr__(self, "image_shape", tuple(self.image_shape))


@dataclass
class Splits:
    """x: float32 N×C×H×W, normalized; y: int64 class indices."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    input_shape: tuple[int, int, int]
    num_classes: int
    source: str  # which source was used, in words, for logs and study attributes
    train_eval_size: int | None = None  # see DataConfig

    @property
    def train_eval(self) -> tuple[Tensor, Tensor]:
        """(images, labels) the train accuracy is measured on: the first ``train_eval_size`` training images."""
        count = len(self.train_y) if self.train_eval_size is None else min(self.train_eval_size, len(self.train_y))
        return self.train_x[:count], self.train_y[:count]

    def to(self, device: str | torch.device) -> Splits:
        tensors = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        return dataclasses.replace(self, **{n: getattr(self, n).to(device) for n in tensors})


def dataset_info(config: DataConfig) -> tuple[tuple[int, int, int], int]:
    """(input_shape, num_classes) without reading any data."""
    check_config(config)
    if config.dataset == "mnist":
        return (1, 28, 28), 10
    if config.dataset == "cifar10":
        return (3, 32, 32), 10
    return tuple(config.image_shape), config.num_classes



# --- splitting and normalizing ------------------------------------------------------------------


@dataclass
class RawData:
    """A whole source as uint8 images N×C×H×W and int64 labels, before splitting."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def split_indices(pool_size: int, train_size: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint (train, val) indices into a pool of training images, from a seeded permutation.

    Validation takes the head of the permutation, so for one seed and val_size the validation set
    stays the same when only train_size changes: studies with different train sizes stay
    comparable.
    """
    perm = torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))
    return perm[val_size : val_size + train_size], perm[:val_size]


def split_raw(raw: RawData, config: DataConfig) -> Splits:
    pool, n_test = len(raw.train_labels), len(raw.test_labels)
    if config.train_size + config.val_size > pool:
        raise UsageError(
            f"data.train_size + data.val_size = {config.train_size + config.val_size} but "
            f"{raw.source} holds only {pool:,} training images"
        )
    if config.test_size > n_test:
        raise UsageError(
            f"data.test_size = {config.test_size} but {raw.source} holds only {n_test:,} test images"
        )
    train, val = split_indices(pool, config.train_size, config.val_size, config.seed)

    # Normalize only the selected images: converting a whole 60k pool to float would cost ~190 MB.
    def norm(images: Tensor) -> Tensor:
        return _normalize(images, raw.mean, raw.std)

    return Splits(
        train_x=norm(raw.train_images[train]),
        train_y=raw.train_labels[train],
        val_x=norm(raw.train_images[val]),
        val_y=raw.train_labels[val],
        test_x=norm(raw.test_images[: config.test_size]),
        test_y=raw.test_labels[: config.test_size],
        input_shape=tuple(raw.train_images.shape[1:]),
        num_classes=dataset_info(config)[1],
        source=raw.source,
        train_eval_size=config.train_eval_size,
    )


def _normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean_t) / std_t




# --- config checks --------------------------------------------------------------------------------


def check_config(config: DataConfig) -> None:
    if config.dataset not in DATASETS:
        raise UsageError(f"data.dataset: {config.dataset!r} is not one of {', '.join(DATASETS)}")
    for field in ("train_size", "val_size", "test_size"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"data.{field}: must be a positive integer, got {value!r}")
    if config.dataset == "mnist":
        if config.source not in ("auto", "bundled", "torchvision") and not config.source.startswith("idx:"):
            raise UsageError(
                f"data.source: {config.source!r} is not allowed for mnist; use {MNIST_SOURCES}"
            )
    elif config.dataset == "cifar10":
        if config.source not in ("auto", "torchvision") and not config.source.startswith("folder:"):
            raise UsageError(
                f"data.source: {config.source!r} is not allowed for cifar10; use {CIFAR10_SOURCES}"
            )
    else:
        shape = config.image_shape
        if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise UsageError(f"data.image_shape: must be three positive integers [C, H, W], got {list(shape)}")
        if not isinstance(config.num_classes, int) or config.num_classes < 2:
            raise UsageError(f"data.num_classes: must be an integer >= 2, got {config.num_classes!r}")


def source_path(config: DataConfig) -> Path:
    """The PATH of an ``idx:PATH`` / ``folder:PATH`` source, user-expanded."""
    path = config.source.split(":", 1)[1]
    if not path:
        raise UsageError(f"data.source: {config.source!r} names no folder after the colon")
    return Path(path).expanduser()


def cache_dir(config: DataConfig) -> Path:
    return Path(config.cache_dir).expanduser()


