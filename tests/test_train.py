"""The trainer: its augmentations, evaluation batches, timing and flat parameters, on real MNIST images."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from conftest import TINY_SPEC
from mixsearch.arch import MixerArch
from mixsearch.data import load_splits
from mixsearch.measure import static_sizes
from mixsearch.models import build_model
from mixsearch.spec import parse_spec
from mixsearch.train import (EVAL_ACTIVATION_BYTES, MAX_EVAL_BATCH, DivergenceError, TrainRecipe, eval_batch_size,
                             evaluate, flat_parameters, random_shift, random_shift_each, train)


def real_images(count: int) -> torch.Tensor:
    splits = load_splits(parse_spec(TINY_SPEC, "tiny.yaml").data)
    return splits.train_x[:count]


def offset_of(original: torch.Tensor, shifted: torch.Tensor, max_pixels: int) -> tuple[int, int]:
    """The (dy, dx) that maps ``original`` onto ``shifted`` (zero fill), found by trying all."""
    for dy in range(-max_pixels, max_pixels + 1):
        for dx in range(-max_pixels, max_pixels + 1):
            expected = torch.zeros_like(original)
            h, w = original.shape[-2:]
            expected[..., max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
                original[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            if torch.equal(expected, shifted):
                return dy, dx
    raise AssertionError("not a shift of the original by at most max_pixels")


def test_shift_each_moves_every_image_by_its_own_offset():
    images = real_images(32)
    shifted = random_shift_each(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    offsets = [offset_of(images[i], shifted[i], 2) for i in range(len(images))]
    assert len(set(offsets)) > 5  # 25 possible offsets, 32 images: many different ones
    # the same seed gives the same shifts
    assert torch.equal(shifted, random_shift_each(images, 2, torch.Generator().manual_seed(0)))


def test_shift_moves_the_whole_batch_by_one_offset():
    images = real_images(8)
    generator = torch.Generator().manual_seed(3)
    shifted = random_shift(images, 2, generator)
    offsets = {offset_of(images[i], shifted[i], 2) for i in range(len(images))}
    assert len(offsets) == 1


def test_evaluation_batches_hold_their_activations_to_the_budget_and_give_the_same_accuracy():
    splits = load_splits(parse_spec(TINY_SPEC, "tiny.yaml").data)
    images, labels = splits.train_x[:300], splits.train_y[:300]
    # 196 tokens × 128 hidden channels: 238,336 bytes of live activations per image, traced
    large = build_model(MixerArch(1, (28, 28), 10, 2, 48, 64, 128, 2))
    per_image = static_sizes(large.arch, (1, 28, 28)).memory.peak_activation_bytes
    assert per_image == 238_336
    # counted once per arch in a process: the trial counted it when it sampled it
    same = MixerArch(1, (28, 28), 10, 2, 48, 64, 128, 2)
    assert static_sizes(same, (1, 28, 28)) is static_sizes(large.arch, (1, 28, 28))
    assert eval_batch_size(large, images) == EVAL_ACTIVATION_BYTES // per_image == 17
    assert eval_batch_size(large, images, activation_bytes=16 * 2**20) == 70
    # 16 tokens: 6,272 bytes per image (the image itself is 3,136), so 668 fit; with a budget of
    # 64 MiB a batch of 1,000 holds a few MB, and the cap decides
    small = build_model(MixerArch(1, (28, 28), 10, 1, 8, 16, 16, 7))
    assert eval_batch_size(small, images) == 668
    assert eval_batch_size(small, images, activation_bytes=64 * 2**20) == MAX_EVAL_BATCH
    # a module that is not a built arch, and any model on another device, keep the cap
    assert eval_batch_size(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), images) == MAX_EVAL_BATCH
    assert eval_batch_size(large, images.to("meta")) == MAX_EVAL_BATCH
    # the batch changes nothing but speed: every image is counted once
    predictions = large.eval()(images).argmax(dim=1)
    expected = (predictions == labels).sum().item() / len(labels)
    assert evaluate(large, images, labels) == evaluate(large, images, labels, batch_size=300) == expected


def test_training_time_is_the_epochs_own_and_leaves_out_what_on_epoch_does():
    splits = load_splits(parse_spec(TINY_SPEC, "tiny.yaml").data)
    model = build_model(MixerArch(1, (28, 28), 10, 1, 8, 16, 16, 7))

    def slow_callback(result):  # as a pruner and storage writes would take time
        time.sleep(0.3)
        return False

    started = time.perf_counter()
    result = train(model, splits, TrainRecipe(epochs=2, batch_size=64), on_epoch=slow_callback)
    wall_seconds = time.perf_counter() - started
    assert [e.epoch for e in result.curve] == [1, 2]
    assert result.train_seconds == pytest.approx(sum(e.seconds for e in result.curve))
    # the callback's 0.6 s lies outside every epoch's time, however slow a loaded machine trains
    assert result.train_seconds > 0
    assert wall_seconds - result.train_seconds >= 0.6


SHARING_MIXER = MixerArch(in_channels=1, image_size=(28, 28), num_classes=10, layers=3, channels=8, token_hidden=8,
                          channel_hidden=8, patch_size=7, sharing={"token.fc1": (0, 0, 0), "channel.fc2": (0, 0, 1)},
                          bias={"token.fc1": "separate"})


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_flat_parameters_train_to_the_weights_per_parameter_updates_give(monkeypatch, optimizer):
    splits = load_splits(parse_spec(TINY_SPEC, "tiny.yaml").data)
    recipe = TrainRecipe(epochs=2, batch_size=64, optimizer=optimizer)
    torch.manual_seed(0)
    initial = build_model(SHARING_MIXER).state_dict()

    def trained() -> dict:
        model = build_model(SHARING_MIXER)
        model.load_state_dict(initial)
        train(model, splits, recipe, seed=3)
        return model.state_dict()

    flat = trained()
    with monkeypatch.context() as patch:  # the optimizer over each parameter, as without flat_parameters
        patch.setattr("mixsearch.train.flat_parameters",
                      lambda model: contextlib.nullcontext(list(model.parameters())))
        per_parameter = trained()
    for name, value in flat.items():
        assert not torch.equal(value, initial[name]), name  # trained, not left as it was
        # Adam folds its weight decay into the gradient; the fused kernel may round that 1 ulp apart.
        assert torch.allclose(value, per_parameter[name], rtol=0, atol=1e-6), name
    if optimizer != "adam":
        assert all(torch.equal(value, per_parameter[name]) for name, value in flat.items())


def test_flat_parameters_are_views_within_and_own_storages_after_training_or_divergence():
    torch.manual_seed(0)
    model = build_model(SHARING_MIXER)
    params = list(model.parameters())
    shared = model.layers[0].token_mixing.mlp.fc1.weight
    assert model.layers[2].token_mixing.mlp.fc1.weight is shared
    with flat_parameters(model) as (flat,):
        assert flat.numel() == sum(p.numel() for p in params)
        assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in params)
        assert all(p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr() for p in params)
        flat.data.add_(1.0)  # what an optimizer's step over ``flat`` does to every parameter
        assert shared.grad.abs().sum() == 0
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in params)
    assert all(p.grad is None for p in params)
    assert model.layers[2].token_mixing.mlp.fc1.weight is shared  # sharing is still one object
    torch.manual_seed(0)
    assert all(torch.equal(p, q + 1.0) for p, q in zip(params, build_model(SHARING_MIXER).parameters()))

    splits = load_splits(parse_spec(TINY_SPEC, "tiny.yaml").data)
    with pytest.raises(DivergenceError):
        train(model, splits, TrainRecipe(epochs=1, batch_size=64, optimizer="sgd", lr=1e30, momentum=0.0))
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in params)


def test_parameters_of_several_dtypes_are_left_as_they_are():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2).double())
    with flat_parameters(model) as params:
        assert params == list(model.parameters())
        assert all(p.grad is None for p in params)
