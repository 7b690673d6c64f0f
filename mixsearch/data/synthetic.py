"""Synthetic data: seeded random class prototypes plus noise, for smoke runs and tests."""

from __future__ import annotations

import torch
from torch import Tensor

from .splits import DataConfig, Splits


def synthetic_splits(config: DataConfig) -> Splits:
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
        train_eval_size=config.train_eval_size,
    )
