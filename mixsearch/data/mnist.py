"""MNIST from the subset bundled in the package, torchvision's cache/download, or an IDX folder."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import torch

from mixsearch.errors import MixsearchError, UsageError

from .idx import read_idx
from .splits import DataConfig, RawData, cache_dir, source_path

# Per-channel mean/std of the full training set (the values used throughout the literature), so
# that every source gives identically scaled inputs.
_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)

# The four file names of the MNIST distribution, keyed by (split, kind). torchvision stores them
# decompressed under ROOT/MNIST/raw/; the original distribution gzips them.
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
BUNDLED_MNIST_TRAIN, BUNDLED_MNIST_TEST = 12_000, 2_500



def _read_mnist_folder(folder, describe: str) -> dict[tuple[str, str], np.ndarray]:
    """The four MNIST arrays from a folder (Path or Traversable) holding them raw or gzipped."""
    arrays = {}
    for key, name in MNIST_FILES.items():
        candidates = [folder / name, folder / f"{name}.gz"]
        file = next((f for f in candidates if f.is_file()), None)
        if file is None:
            raise UsageError(f"data.source: {describe} has no {name} (or {name}.gz)")
        try:
            arrays[key] = read_idx(file)
        except (ValueError, OSError, EOFError) as e:  # EOFError: truncated gzip
            raise UsageError(
                f"data.source: {describe}: {file.name} is not a valid IDX file ({e})"
            ) from e
    for split in ("train", "test"):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UsageError(
                f"data.source: {describe}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
    return arrays


def _mnist_raw(arrays: dict[tuple[str, str], np.ndarray], source: str) -> RawData:
    def images(split):
        return torch.from_numpy(arrays[(split, "images")].copy()).unsqueeze(1)

    def labels(split):
        return torch.from_numpy(arrays[(split, "labels")].astype(np.int64))

    return RawData(
        images("train"), labels("train"), images("test"), labels("test"), _MNIST_MEAN, _MNIST_STD, source
    )


# --- MNIST sources --------------------------------------------------------------------------------


def bundled_mnist_dir():
    """The package's MNIST subset (a Traversable; a real folder in a normal install)."""
    return importlib.resources.files("mixsearch") / "bundled" / "mnist"


def load_mnist(config: DataConfig) -> RawData:
    source = config.source
    if source == "auto":
        source = _auto_mnist_source(config)
    if source == "bundled":
        arrays = _read_mnist_folder(bundled_mnist_dir(), "bundled MNIST subset")
        return _mnist_raw(
            arrays, f"bundled MNIST subset ({BUNDLED_MNIST_TRAIN:,} train / {BUNDLED_MNIST_TEST:,} test)"
        )
    if source == "torchvision":
        return _torchvision_mnist(config)
    folder = source_path(config)
    if not folder.is_dir():
        raise UsageError(f"data.source: {config.source!r}: {folder} is not a folder")
    return _mnist_raw(_read_mnist_folder(folder, f"IDX folder {folder}"), f"IDX folder {folder}")


def _torchvision_mnist_present(root: Path) -> bool:
    # The same test torchvision applies before deciding to download.
    return all((root / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES.values())


def _auto_mnist_source(config: DataConfig) -> str:
    if _torchvision_mnist_present(cache_dir(config)):
        return "torchvision"
    fits = (
        config.train_size + config.val_size <= BUNDLED_MNIST_TRAIN
        and config.test_size <= BUNDLED_MNIST_TEST
    )
    return "bundled" if fits else "torchvision"


def _torchvision_mnist(config: DataConfig) -> RawData:
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    root = cache_dir(config)
    present = _torchvision_mnist_present(root)
    try:
        train = MNIST(root=str(root), train=True, download=True)
        test = MNIST(root=str(root), train=False, download=True)
    except (RuntimeError, OSError, ValueError) as e:
        if present:
            raise MixsearchError(
                f"cannot read the MNIST files in {root / 'MNIST' / 'raw'} ({_first_line(e)}); "
                "delete them to download again"
            ) from e
        raise MixsearchError(
            f"cannot download MNIST into {root} (no network?); use data.source: bundled "
            f"(up to {BUNDLED_MNIST_TRAIN:,} train+val / {BUNDLED_MNIST_TEST:,} test images) or idx:PATH"
        ) from e
    source = f"torchvision cache {config.cache_dir}" + ("" if present else " (downloaded)")
    return RawData(
        train.data.unsqueeze(1),
        train.targets.to(torch.int64),
        test.data.unsqueeze(1),
        test.targets.to(torch.int64),
        _MNIST_MEAN,
        _MNIST_STD,
        source,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

