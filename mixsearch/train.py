"""The trainer: epochs over tensor-resident data, one validation accuracy per epoch.

The whole split already lives on the device as tensors (see ``data.py``), so a batch is an index
into them: no DataLoader, no per-sample Python work. The caller gets a callback after each epoch
and may stop training there (that is how pruning works in a multi-objective study, where Optuna's
``trial.report`` is unavailable).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .choices import Rule
from .data import Splits
from .errors import MixsearchError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTATIONS = ("none", "shift", "shift_each")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 0.003
    schedule: str = "cosine"
    weight_decay: float = 0.05
    momentum: float = 0.9
    label_smoothing: float = 0.0
    augmentation: str = "none"
    shift_pixels: int = 2
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


# What each ``train:`` field of a spec accepts; every one may be searched.
TRAIN_RULES: dict[str, Rule] = {
    "epochs": Rule(int, TrainRecipe.epochs, minimum=1, searchable=True),
    "batch_size": Rule(int, TrainRecipe.batch_size, minimum=1, searchable=True),
    "optimizer": Rule(str, TrainRecipe.optimizer, allowed=OPTIMIZERS, searchable=True),
    "lr": Rule(float, TrainRecipe.lr, minimum=1e-12, searchable=True),
    "schedule": Rule(str, TrainRecipe.schedule, allowed=SCHEDULES, searchable=True),
    "weight_decay": Rule(float, TrainRecipe.weight_decay, minimum=0.0, searchable=True),
    "momentum": Rule(float, TrainRecipe.momentum, minimum=0.0, maximum=1.0, searchable=True),
    "label_smoothing": Rule(float, TrainRecipe.label_smoothing, minimum=0.0, maximum=0.99, searchable=True),
    "augmentation": Rule(str, TrainRecipe.augmentation, allowed=AUGMENTATIONS, searchable=True),
    "shift_pixels": Rule(int, TrainRecipe.shift_pixels, minimum=1, searchable=True),
    "device": Rule(str, TrainRecipe.device, allowed=DEVICES, searchable=True),
}


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    val_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    curve: list[EpochResult] = field(default_factory=list)
    train_seconds: float = 0.0  # the epochs' own time, validation included; not what ``on_epoch`` does
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.curve)

    @property
    def val_accuracy(self) -> float:
        return self.curve[-1].val_accuracy if self.curve else 0.0


class DivergenceError(MixsearchError):
    """The loss became NaN or infinite; the trial cannot recover."""

    def __init__(self, epoch: int, step: int, partial: TrainResult):
        self.epoch = epoch
        self.partial = partial
        super().__init__(f"loss is not finite at epoch {epoch}, step {step}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MixsearchError("train.device is cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def _make_optimizer(params: list[nn.Parameter], recipe: TrainRecipe) -> torch.optim.Optimizer:
    # fused: one kernel updates every parameter, where the default steps each tensor with a dozen
    # small ops; with a few dozen small tensors that per-op overhead is most of the step.
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0, fused=True)


@contextlib.contextmanager
def flat_parameters(model: nn.Module):
    """Within: the trainable parameters of ``model`` as views of one flat Parameter, their
    gradients as views of its gradient. Yields ``[flat]``, or the parameters themselves when they
    do not share one dtype and device (nothing is changed then).

    Backward accumulates each gradient in place into its view, and an optimizer over ``[flat]``
    updates every parameter in one call. Adam, AdamW and SGD (momentum, Nesterov, weight decay)
    act element by element, so the update is the same as per parameter, except that a parameter
    which gets no gradient is stepped with a zero one rather than skipped. What it saves is the
    optimizer's per-tensor bookkeeping: with the few dozen small tensors of a Mixer, ``step`` and
    ``zero_grad`` over each tensor took 5-9% of a training step (docs/performance.md).
    On exit each parameter gets a storage of its own again, holding its trained values.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or len({(p.dtype, p.device) for p in params}) > 1:
        yield params
        return
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        size = p.numel()
        p.data = flat.data[offset:offset + size].view_as(p)
        p.grad = flat.grad[offset:offset + size].view_as(p)
        offset += size
    try:
        yield [flat]
    finally:
        for p in params:
            p.data = p.data.clone()
            p.grad = None


def _make_schedule(optimizer: torch.optim.Optimizer, recipe: TrainRecipe, total_steps: int):
    # Stepped once per batch, so the schedule shape does not depend on the batch count.
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=max(total_steps, 1))
    return None


def random_shift(images: torch.Tensor, max_pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate a whole batch by one random offset, filling the uncovered border with zeros.

    One offset per batch keeps this a pair of tensor ops, with no per-sample loop.
    """
    dy, dx = (int(v) for v in torch.randint(-max_pixels, max_pixels + 1, (2,), generator=generator))
    if dy == 0 and dx == 0:
        return images
    height, width = images.shape[-2:]
    shifted = torch.zeros_like(images)
    src_y = slice(max(0, -dy), height - max(0, dy))
    dst_y = slice(max(0, dy), height - max(0, -dy))
    src_x = slice(max(0, -dx), width - max(0, dx))
    dst_x = slice(max(0, dx), width - max(0, -dx))
    shifted[..., dst_y, dst_x] = images[..., src_y, src_x]
    return shifted


def random_shift_each(images: torch.Tensor, max_pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate every image by its own random offset, filling the uncovered border with zeros.

    The batch is zero-padded by ``max_pixels`` on each side and each image's window is gathered
    with one indexing op: a batch sees as many different shifts as it has images, where
    ``random_shift`` gives the whole batch one.
    """
    count, channels, height, width = images.shape
    padded = F.pad(images, (max_pixels,) * 4)
    device = images.device
    dy, dx = (torch.randint(0, 2 * max_pixels + 1, (count,), generator=generator).to(device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
    batch = torch.arange(count, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


# On a CPU, evaluation batches are sized so that one batch's live activations (traced per image,
# measure.memory) stay near EVAL_ACTIVATION_BYTES, within the cache. Batches of 1,000 took
# 1.8-2.3× as long as batches of 64-128 for Mixers of 196 tokens, and raised a worker's peak RSS by
# a quarter of a GiB, while small archs ran best at 1,000; over 24 archs of the default space,
# 4 MiB evaluated 1.14× faster than 16 MiB, and 2 and 8 MiB about as fast as 4 (docs/performance.md).
EVAL_ACTIVATION_BYTES = 4 * 2**20
MAX_EVAL_BATCH = 1000  # also the batch on an accelerator, and for a model that is not a built arch
MIN_EVAL_BATCH = 8


def eval_batch_size(model: nn.Module, images: torch.Tensor, activation_bytes: int = EVAL_ACTIVATION_BYTES) -> int:
    """The batch ``evaluate`` runs ``model`` with on ``images``: ``activation_bytes`` of live
    activations (see EVAL_ACTIVATION_BYTES). They come from the arch's static sizes, counted once
    per arch in a process (a trial counted them when it sampled the arch)."""
    from .measure.sizes import static_sizes

    arch = getattr(model, "arch", None)
    if images.device.type != "cpu" or arch is None:
        return MAX_EVAL_BATCH
    per_image = static_sizes(arch, tuple(images.shape[1:])).memory.peak_activation_bytes
    return max(MIN_EVAL_BATCH, min(MAX_EVAL_BATCH, activation_bytes // max(per_image, 1)))


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None) -> float:
    """Top-1 accuracy of ``model`` in eval mode, in batches of ``batch_size`` (default: ``eval_batch_size``)."""
    if len(labels) == 0:
        return 0.0
    batch_size = batch_size or eval_batch_size(model, images)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, len(labels), batch_size):
        logits = model(images[start:start + batch_size])
        correct += (logits.argmax(dim=1) == labels[start:start + batch_size]).sum()
    model.train(was_training)
    return correct.item() / len(labels)


def train(
    model: nn.Module,
    splits: Splits,
    recipe: TrainRecipe,
    seed: int = 0,
    on_epoch: Callable[[EpochResult], bool] | None = None,
) -> TrainResult:
    """Train ``model`` on ``splits`` (already on the training device).

    ``on_epoch`` sees each epoch's result; returning True stops training (the result then says
    ``stopped_early``). A non-finite loss raises ``DivergenceError`` carrying the curve so far.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with flat_parameters(model) as params:
        return _train_epochs(model, params, splits, recipe, generator, on_epoch)


def _train_epochs(model: nn.Module, params: list[nn.Parameter], splits: Splits, recipe: TrainRecipe,
                  generator: torch.Generator, on_epoch: Callable[[EpochResult], bool] | None) -> TrainResult:
    device = splits.train_x.device
    optimizer = _make_optimizer(params, recipe)
    steps_per_epoch = math.ceil(len(splits.train_y) / recipe.batch_size)
    schedule = _make_schedule(optimizer, recipe, steps_per_epoch * recipe.epochs)
    # A finiteness check reads the loss back; on an accelerator that is a sync, so do it less often.
    check_every = 1 if device.type == "cpu" else 16
    result = TrainResult()
    for epoch in range(1, recipe.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(len(splits.train_y), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            index = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            # index_select copies whole rows; advanced indexing (x[index]) took 5× as long on a CPU.
            images, labels = splits.train_x.index_select(0, index), splits.train_y.index_select(0, index)
            if recipe.augmentation == "shift":
                images = random_shift(images, recipe.shift_pixels, generator)
            elif recipe.augmentation == "shift_each":
                images = random_shift_each(images, recipe.shift_pixels, generator)
            loss = F.cross_entropy(model(images), labels, label_smoothing=recipe.label_smoothing)
            # In place, not set to None: with flat_parameters the gradients are views backward adds into.
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            loss_sum += loss.detach()
            if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                if not torch.isfinite(loss_sum):
                    result.train_seconds += time.perf_counter() - epoch_start
                    raise DivergenceError(epoch, step + 1, result)
        val_accuracy = evaluate(model, splits.val_x, splits.val_y)
        epoch_result = EpochResult(epoch, loss_sum.item() / steps_per_epoch, val_accuracy,
                                   time.perf_counter() - epoch_start)
        result.curve.append(epoch_result)
        # The pruner's decision and the storage writes of ``on_epoch`` lie outside training.
        result.train_seconds += epoch_result.seconds
        if on_epoch is not None and on_epoch(epoch_result):
            result.stopped_early = True
            break
    return result
