"""Datasets → normalized tensors held in memory.

The trainer takes batches by indexing whole tensors, so everything here decodes complete arrays
with numpy and converts them once; there is no per-sample Python work and no DataLoader.

Sources, one module each:

- ``mnist``: the subset bundled in the package (works offline, the default when it is big enough),
  torchvision's cache/download, or a folder of IDX files (``idx:PATH``, read by ``idx``).
- ``cifar10``: torchvision's download, or a folder of the python-pickle batches (``folder:PATH``).
- ``synthetic``: seeded random class prototypes plus noise, for smoke runs and tests.

``splits`` holds the config, the splits and how a source's images are split and normalized.
"""

from __future__ import annotations

import torch

from .cifar10 import CIFAR10_DIR, CIFAR10_TEST_BATCH, CIFAR10_TRAIN_BATCHES, load_cifar10, read_cifar_batch
from .idx import encode_idx, read_idx, write_idx
from .mnist import BUNDLED_MNIST_TEST, BUNDLED_MNIST_TRAIN, MNIST_FILES, bundled_mnist_dir, load_mnist
from .splits import DATASETS, DataConfig, Splits, check_config, dataset_info, split_indices, split_raw
from .synthetic import synthetic_splits

__all__ = ["BUNDLED_MNIST_TEST", "BUNDLED_MNIST_TRAIN", "CIFAR10_DIR", "CIFAR10_TEST_BATCH",
           "CIFAR10_TRAIN_BATCHES", "DATASETS", "MNIST_FILES", "DataConfig", "Splits", "bundled_mnist_dir",
           "dataset_info", "encode_idx", "load_splits", "read_cifar_batch", "read_idx", "split_indices",
           "write_idx"]


def load_splits(config: DataConfig, device: str | torch.device = "cpu") -> Splits:
    check_config(config)
    if config.dataset == "synthetic":
        splits = synthetic_splits(config)
    else:
        loader = load_mnist if config.dataset == "mnist" else load_cifar10
        raw = loader(config)
        splits = split_raw(raw, config)
    return splits.to(device)
