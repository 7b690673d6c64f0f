"""CIFAR-10 from torchvision's download or a folder of the python-pickle batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from mixsearch.errors import MixsearchError, UsageError

from .splits import DataConfig, RawData, cache_dir, source_path

# Per-channel mean/std of the full training set (the values used throughout the literature).
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers.

    The batches of a ``folder:PATH`` source may come from anywhere, and an unrestricted pickle can
    run arbitrary code when loaded.
    """

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N×3×32×32, int64 labels N) from one python-pickle CIFAR-10 batch file."""
    with path.open("rb") as f:
        # The batches were pickled by Python 2: 'bytes' keeps their str keys and arrays intact.
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError("not a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError("no 'data' or 'labels' entry")
    # Rows are 3072 bytes: the red plane, then green, then blue, each 32×32 row-major.
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return images, labels


def _cifar_batch_dir(folder: Path) -> Path | None:
    """The folder holding all six batch files: folder/cifar-10-batches-py or folder itself."""
    for candidate in (folder / CIFAR10_DIR, folder):
        if all((candidate / n).is_file() for n in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)):
            return candidate
    return None


def _read_cifar_dir(batch_dir: Path, source: str) -> RawData:
    def read(name):
        try:
            return read_cifar_batch(batch_dir / name)
        except (pickle.UnpicklingError, ValueError, EOFError, OSError) as e:
            raise UsageError(f"data.source: {batch_dir / name} is not a CIFAR-10 batch ({e})") from e

    train = [read(n) for n in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = read(CIFAR10_TEST_BATCH)
    return RawData(
        torch.from_numpy(np.concatenate([images for images, _ in train])),
        torch.from_numpy(np.concatenate([labels for _, labels in train])),
        torch.from_numpy(test_images.copy()),
        torch.from_numpy(test_labels),
        _CIFAR10_MEAN,
        _CIFAR10_STD,
        source,
    )


def load_cifar10(config: DataConfig) -> RawData:
    if config.source.startswith("folder:"):
        folder = source_path(config)
        batch_dir = _cifar_batch_dir(folder)
        if batch_dir is None:
            raise UsageError(
                f"data.source: {config.source!r}: {folder} holds neither {CIFAR10_DIR}/ nor the files "
                f"{', '.join(CIFAR10_TRAIN_BATCHES)}, {CIFAR10_TEST_BATCH}"
            )
        return _read_cifar_dir(batch_dir, f"CIFAR-10 batches in {batch_dir}")

    root = cache_dir(config)
    batch_dir = _cifar_batch_dir(root)
    if batch_dir is not None and config.source == "auto":
        return _read_cifar_dir(batch_dir, f"torchvision cache {config.cache_dir}")
    # torchvision fetches, md5-checks and extracts; we read the batches ourselves so that every
    # CIFAR-10 source goes through the same reader. train=False: its loading step then reads only
    # the one test batch, which we discard.
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(root=str(root), train=False, download=True)
    except (RuntimeError, OSError) as e:
        raise MixsearchError(
            f"cannot download CIFAR-10 into {root} (no network?); use data.source: folder:PATH"
        ) from e
    downloaded = "" if batch_dir is not None else " (downloaded)"
    return _read_cifar_dir(root / CIFAR10_DIR, f"torchvision cache {config.cache_dir}{downloaded}")


# --- synthetic ------------------------------------------------------------------------------------
