"""Datasets → normalized tensors held in memory.

The trainer takes batches by indexing whole tensors, so everything here decodes complete arrays
with numpy and converts them once; there is no per-sample Python work and no DataLoader.

Sources:

- MNIST: the subset bundled in the package (works offline, the default when it is big enough),
  torchvision's cache/download, or a folder of IDX files (``idx:PATH``).
- CIFAR-10: torchvision's download, or a folder of the python-pickle batches (``folder:PATH``).
- synthetic: seeded random class prototypes plus noise, for smoke runs and tests.

Train and validation images are disjoint parts of the dataset's training images, picked by a
seeded permutation; test images are the first ``test_size`` of the test images, so test accuracy
is comparable across seeds.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from mixsearch.errors import MixsearchError, UsageError

DATASETS = ("mnist", "cifar10", "synthetic")
MNIST_SOURCES = "auto, bundled, torchvision or idx:PATH"
CIFAR10_SOURCES = "auto, torchvision or folder:PATH"

# Per-channel mean/std of the full training sets (the values used throughout the literature), so
# that every source of one dataset gives identically scaled inputs.
_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# The four file names of the MNIST distribution, keyed by (split, kind). torchvision stores them
# decompressed under ROOT/MNIST/raw/; the original distribution gzips them.
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
BUNDLED_MNIST_TRAIN, BUNDLED_MNIST_TEST = 12_000, 2_500

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    # mnist: auto | bundled | torchvision | idx:PATH; cifar10: auto | torchvision | folder:PATH;
    # ignored for synthetic.
    source: str = "auto"
    train_size: int = 10000
    val_size: int = 2000
    test_size: int = 2500
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

    def to(self, device: str | torch.device) -> Splits:
        tensors = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        return dataclasses.replace(self, **{n: getattr(self, n).to(device) for n in tensors})


def dataset_info(config: DataConfig) -> tuple[tuple[int, int, int], int]:
    """(input_shape, num_classes) without reading any data."""
    _check_config(config)
    if config.dataset == "mnist":
        return (1, 28, 28), 10
    if config.dataset == "cifar10":
        return (3, 32, 32), 10
    return tuple(config.image_shape), config.num_classes


def load_splits(config: DataConfig, device: str | torch.device = "cpu") -> Splits:
    _check_config(config)
    if config.dataset == "synthetic":
        splits = _synthetic_splits(config)
    else:
        loader = _load_mnist if config.dataset == "mnist" else _load_cifar10
        raw = loader(config)
        splits = _split(raw, config)
    return splits.to(device)


# --- splitting and normalizing ------------------------------------------------------------------


@dataclass
class _RawData:
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


def _split(raw: _RawData, config: DataConfig) -> Splits:
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
    )


def _normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean_t) / std_t


# --- config checks --------------------------------------------------------------------------------


def _check_config(config: DataConfig) -> None:
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


def _source_path(config: DataConfig) -> Path:
    """The PATH of an ``idx:PATH`` / ``folder:PATH`` source, user-expanded."""
    path = config.source.split(":", 1)[1]
    if not path:
        raise UsageError(f"data.source: {config.source!r} names no folder after the colon")
    return Path(path).expanduser()


def _cache_dir(config: DataConfig) -> Path:
    return Path(config.cache_dir).expanduser()


# --- IDX files (MNIST's format) -------------------------------------------------------------------


class _Readable(Protocol):
    """A pathlib.Path or an importlib.resources Traversable: the bundled files may sit in a zip."""

    name: str

    def read_bytes(self) -> bytes: ...


def read_idx(file: _Readable) -> np.ndarray:
    """Decode an unsigned-byte IDX file (gzipped if its name ends in .gz) into a uint8 array.

    Raises ValueError when the content is not a valid ubyte IDX file.
    """
    data = file.read_bytes()
    if file.name.endswith(".gz"):
        data = gzip.decompress(data)
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
    # one big-endian uint32 per dimension.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"size does not match its header shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """The (uncompressed) IDX encoding of a uint8 array: the inverse of read_idx."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzip -9 compressed when the name ends in .gz.

    The gzip header carries no timestamp, so the same array always gives the same bytes.
    """
    data = encode_idx(array)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.write_bytes(data)


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


def _mnist_raw(arrays: dict[tuple[str, str], np.ndarray], source: str) -> _RawData:
    def images(split):
        return torch.from_numpy(arrays[(split, "images")].copy()).unsqueeze(1)

    def labels(split):
        return torch.from_numpy(arrays[(split, "labels")].astype(np.int64))

    return _RawData(
        images("train"), labels("train"), images("test"), labels("test"), _MNIST_MEAN, _MNIST_STD, source
    )


# --- MNIST sources --------------------------------------------------------------------------------


def bundled_mnist_dir():
    """The package's MNIST subset (a Traversable; a real folder in a normal install)."""
    return importlib.resources.files("mixsearch") / "bundled" / "mnist"


def _load_mnist(config: DataConfig) -> _RawData:
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
    folder = _source_path(config)
    if not folder.is_dir():
        raise UsageError(f"data.source: {config.source!r}: {folder} is not a folder")
    return _mnist_raw(_read_mnist_folder(folder, f"IDX folder {folder}"), f"IDX folder {folder}")


def _torchvision_mnist_present(root: Path) -> bool:
    # The same test torchvision applies before deciding to download.
    return all((root / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES.values())


def _auto_mnist_source(config: DataConfig) -> str:
    if _torchvision_mnist_present(_cache_dir(config)):
        return "torchvision"
    fits = (
        config.train_size + config.val_size <= BUNDLED_MNIST_TRAIN
        and config.test_size <= BUNDLED_MNIST_TEST
    )
    return "bundled" if fits else "torchvision"


def _torchvision_mnist(config: DataConfig) -> _RawData:
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    root = _cache_dir(config)
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
    return _RawData(
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


# --- CIFAR-10 -------------------------------------------------------------------------------------


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


def _read_cifar_dir(batch_dir: Path, source: str) -> _RawData:
    def read(name):
        try:
            return read_cifar_batch(batch_dir / name)
        except (pickle.UnpicklingError, ValueError, EOFError, OSError) as e:
            raise UsageError(f"data.source: {batch_dir / name} is not a CIFAR-10 batch ({e})") from e

    train = [read(n) for n in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = read(CIFAR10_TEST_BATCH)
    return _RawData(
        torch.from_numpy(np.concatenate([images for images, _ in train])),
        torch.from_numpy(np.concatenate([labels for _, labels in train])),
        torch.from_numpy(test_images.copy()),
        torch.from_numpy(test_labels),
        _CIFAR10_MEAN,
        _CIFAR10_STD,
        source,
    )


def _load_cifar10(config: DataConfig) -> _RawData:
    if config.source.startswith("folder:"):
        folder = _source_path(config)
        batch_dir = _cifar_batch_dir(folder)
        if batch_dir is None:
            raise UsageError(
                f"data.source: {config.source!r}: {folder} holds neither {CIFAR10_DIR}/ nor the files "
                f"{', '.join(CIFAR10_TRAIN_BATCHES)}, {CIFAR10_TEST_BATCH}"
            )
        return _read_cifar_dir(batch_dir, f"CIFAR-10 batches in {batch_dir}")

    root = _cache_dir(config)
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


def _synthetic_splits(config: DataConfig) -> Splits:
    """A learnable task: one fixed random prototype per class, each sample = prototype + noise.

    Mixing 0.6 · prototype with 0.8 · unit noise keeps every pixel at zero mean and unit variance
    (0.36 + 0.64 = 1), i.e. already normalized, while the class signal summed over many pixels
    makes the classes easy to separate. Prototypes are smooth (upsampled from a coarse grid), so
    patch- and convolution-based models see spatial structure, not only pixel-wise codes.
    Everything comes from one generator seeded with config.seed, drawn in a fixed order
    (prototypes, test, validation, train), so test and validation do not change with train_size.
    """
    g = torch.Generator().manual_seed(config.seed)
    c, h, w = config.image_shape
    k = config.num_classes
    coarse = torch.randn(k, c, max(1, h // 4), max(1, w // 4), generator=g)
    prototypes = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, k, (n,), generator=g)
        noise = torch.randn(n, c, h, w, generator=g)
        return 0.6 * prototypes[labels] + 0.8 * noise, labels

    test_x, test_y = draw(config.test_size)
    val_x, val_y = draw(config.val_size)
    train_x, train_y = draw(config.train_size)
    return Splits(
        train_x, train_y, val_x, val_y, test_x, test_y,
        input_shape=(c, h, w),
        num_classes=k,
        source=f"synthetic {c}x{h}x{w}, {k} classes, seed {config.seed}",
    )
