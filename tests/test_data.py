"""The data layer on the bundled MNIST subset and on files written into tmp_path; never the network."""

import dataclasses
import gzip
import pickle
import socket
from urllib.error import URLError

import numpy as np
import pytest
import torch

from mixsearch.data import (
    BUNDLED_MNIST_TEST,
    BUNDLED_MNIST_TRAIN,
    MNIST_FILES,
    DataConfig,
    bundled_mnist_dir,
    dataset_info,
    load_splits,
    read_idx,
    split_indices,
    write_idx,
)
from mixsearch.errors import MixsearchError, UsageError

SMALL = dict(train_size=1000, val_size=200, test_size=300)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to connect fails at once, so a test that would download cannot hang or leak."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def bundled_arrays():
    return {key: read_idx(bundled_mnist_dir() / f"{name}.gz") for key, name in MNIST_FILES.items()}


def write_mnist_folder(folder, arrays, gz):
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in MNIST_FILES.items():
        write_idx(folder / (f"{name}.gz" if gz else name), arrays[key])


def nearest_mean_accuracy(s):
    """Val accuracy of classifying by the nearest class-mean image: high only on learnable data."""
    means = torch.stack([s.train_x[s.train_y == c].mean(0) for c in range(s.num_classes)]).flatten(1)
    predicted = torch.cdist(s.val_x.flatten(1), means).argmin(1)
    return (predicted == s.val_y).float().mean().item()


# --- bundled subset -------------------------------------------------------------------------------


def test_bundled_files_hold_the_documented_counts(bundled_arrays):
    assert bundled_arrays[("train", "images")].shape == (BUNDLED_MNIST_TRAIN, 28, 28)
    assert bundled_arrays[("train", "labels")].shape == (BUNDLED_MNIST_TRAIN,)
    assert bundled_arrays[("test", "images")].shape == (BUNDLED_MNIST_TEST, 28, 28)
    assert bundled_arrays[("test", "labels")].shape == (BUNDLED_MNIST_TEST,)
    # The first MNIST training labels are famously 5, 0, 4, 1, 9; the first test labels 7, 2, 1, 0.
    assert bundled_arrays[("train", "labels")][:5].tolist() == [5, 0, 4, 1, 9]
    assert bundled_arrays[("test", "labels")][:4].tolist() == [7, 2, 1, 0]


def test_bundled_loads_real_digits():
    s = load_splits(DataConfig(source="bundled"))
    assert s.source == "bundled MNIST subset (12,000 train / 2,500 test)"
    assert (s.input_shape, s.num_classes) == ((1, 28, 28), 10)
    assert s.train_x.shape == (10000, 1, 28, 28) and s.val_x.shape == (2000, 1, 28, 28)
    assert s.test_x.shape == (2500, 1, 28, 28)
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == "cpu"
        assert set(y.unique().tolist()) == set(range(10))
        # roughly balanced classes, as in MNIST (each digit 9–11 %)
        assert y.bincount().min() > 0.07 * len(y)
    # Normalized with MNIST's mean/std: about zero mean, unit std; background (0) is the minimum
    # and covers most of each image.
    assert abs(s.train_x.mean().item()) < 0.05 and abs(s.train_x.std().item() - 1) < 0.05
    background = -0.1307 / 0.3081
    assert s.train_x.min().item() == pytest.approx(background, abs=1e-5)
    assert s.train_x.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-5)
    assert 0.7 < (s.train_x == s.train_x.min()).float().mean().item() < 0.9
    assert nearest_mean_accuracy(s) > 0.75  # class-mean digits already separate real MNIST well


def test_default_config_falls_back_to_bundled_when_cache_is_empty(tmp_path):
    s = load_splits(DataConfig(cache_dir=str(tmp_path), **SMALL))
    assert s.source.startswith("bundled MNIST subset")
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (1000, 200, 300)


def test_test_split_is_the_first_test_images_whatever_the_seed(bundled_arrays):
    a = load_splits(DataConfig(source="bundled", seed=0, **SMALL))
    b = load_splits(DataConfig(source="bundled", seed=1, **SMALL))
    assert torch.equal(a.test_x, b.test_x)
    assert a.test_y.tolist() == bundled_arrays[("test", "labels")][:300].tolist()


# --- determinism and disjoint splits --------------------------------------------------------------


def test_same_seed_gives_identical_splits_and_other_seed_differs():
    a = load_splits(DataConfig(source="bundled", seed=3, **SMALL))
    b = load_splits(DataConfig(source="bundled", seed=3, **SMALL))
    c = load_splits(DataConfig(source="bundled", seed=4, **SMALL))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.val_x, c.val_x)


def test_train_and_val_are_disjoint_and_are_what_load_splits_returns(bundled_arrays):
    train, val = split_indices(BUNDLED_MNIST_TRAIN, 9000, 3000, seed=7)
    assert len(train) == 9000 and len(val) == 3000
    assert len(set(train.tolist()) | set(val.tolist())) == BUNDLED_MNIST_TRAIN  # disjoint, all used
    s = load_splits(DataConfig(source="bundled", train_size=9000, val_size=3000, seed=7))
    labels = torch.from_numpy(bundled_arrays[("train", "labels")].astype(np.int64))
    assert torch.equal(s.train_y, labels[train]) and torch.equal(s.val_y, labels[val])
    images = torch.from_numpy(bundled_arrays[("train", "images")].copy())
    raw_val = (s.val_x * 0.3081 + 0.1307) * 255
    assert torch.allclose(raw_val.squeeze(1), images[val].float(), atol=1e-3)


def test_validation_set_does_not_change_with_train_size():
    small = load_splits(DataConfig(source="bundled", train_size=500, val_size=200, test_size=10))
    large = load_splits(DataConfig(source="bundled", train_size=5000, val_size=200, test_size=10))
    assert torch.equal(small.val_x, large.val_x)


class AlwaysZero(torch.nn.Module):
    """Predicts class 0 for every image: its accuracy is the share of zeros among the labels it sees."""

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()


def test_train_accuracy_is_measured_on_the_fixed_sample_of_the_training_split():
    from mixsearch.seeds import measure_seed
    from mixsearch.train import EpochResult, TrainResult

    config = DataConfig(source="bundled", train_size=1000, val_size=200, test_size=100, train_eval_size=300)
    s = load_splits(config)
    full = load_splits(DataConfig(source="bundled", train_size=1000, val_size=200, test_size=100))
    assert torch.equal(s.train_x, full.train_x)  # the sample changes what is measured, not what is trained on
    images, labels = s.train_eval
    assert torch.equal(images, full.train_x[:300]) and torch.equal(labels, full.train_y[:300])
    # Label the sample 0 and the rest 1: the accuracy says which images were evaluated.
    s.train_y[:300], s.train_y[300:] = 0, 1
    trained = TrainResult([EpochResult(1, 0.1, 0.5, 1.0)], 1.0)
    assert measure_seed(AlwaysZero(), s, 0, trained).train_accuracy == 1.0
    every_image = dataclasses.replace(s, train_eval_size=None)
    assert measure_seed(AlwaysZero(), every_image, 0, trained).train_accuracy == 0.3
    assert s.to("cpu").train_eval_size == 300


def test_to_moves_every_tensor_and_keeps_metadata():
    s = load_splits(DataConfig(dataset="synthetic", train_size=10, val_size=5, test_size=5))
    moved = s.to("meta")
    assert all(t.device.type == "meta" for t in (moved.train_x, moved.train_y, moved.val_x, moved.val_y,
                                                moved.test_x, moved.test_y))
    assert (moved.input_shape, moved.num_classes, moved.source) == (s.input_shape, s.num_classes, s.source)
    assert s.train_x.device.type == "cpu"  # the original is untouched


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes, field, available",
    [
        (dict(train_size=11000, val_size=2000), "data.train_size + data.val_size", "12,000"),
        (dict(test_size=2501), "data.test_size", "2,500"),
    ],
)
def test_sizes_beyond_the_source_name_the_field_and_the_count(sizes, field, available):
    with pytest.raises(UsageError) as e:
        load_splits(DataConfig(source="bundled", **sizes))
    message = str(e.value)
    assert field in message and available in message and "\n" not in message


@pytest.mark.parametrize(
    "config, needle",
    [
        (DataConfig(dataset="imagenet"), "data.dataset"),
        (DataConfig(source="folder:/x"), "data.source"),
        (DataConfig(dataset="cifar10", source="bundled"), "data.source"),
        (DataConfig(train_size=0), "data.train_size"),
        (DataConfig(dataset="synthetic", image_shape=(28, 28)), "data.image_shape"),
        (DataConfig(dataset="synthetic", num_classes=1), "data.num_classes"),
    ],
)
def test_invalid_config_is_a_usage_error_naming_the_field(config, needle):
    with pytest.raises(UsageError, match=needle):
        dataset_info(config)
    with pytest.raises(UsageError, match=needle):
        load_splits(config)


def test_dataset_info():
    assert dataset_info(DataConfig()) == ((1, 28, 28), 10)
    assert dataset_info(DataConfig(dataset="cifar10")) == ((3, 32, 32), 10)
    synthetic = DataConfig(dataset="synthetic", image_shape=[3, 16, 8], num_classes=4)
    assert dataset_info(synthetic) == ((3, 16, 8), 4)


# --- idx:PATH -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_reads_gzipped_and_raw_files(tmp_path, bundled_arrays, gz):
    write_mnist_folder(tmp_path, bundled_arrays, gz)
    s = load_splits(DataConfig(source=f"idx:{tmp_path}", **SMALL))
    bundled = load_splits(DataConfig(source="bundled", **SMALL))
    assert s.source == f"IDX folder {tmp_path}"
    assert torch.equal(s.train_x, bundled.train_x) and torch.equal(s.test_y, bundled.test_y)


def test_idx_roundtrip_is_exact(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes())[:4] == bytes([0, 0, 8, 3])


def test_idx_folder_missing_file_or_folder_is_a_usage_error(tmp_path, bundled_arrays):
    with pytest.raises(UsageError, match="data.source.*not a folder"):
        load_splits(DataConfig(source=f"idx:{tmp_path / 'absent'}"))
    write_mnist_folder(tmp_path, bundled_arrays, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UsageError, match="data.source.*t10k-labels-idx1-ubyte"):
        load_splits(DataConfig(source=f"idx:{tmp_path}"))


def test_idx_folder_with_a_corrupt_file_is_a_usage_error(tmp_path, bundled_arrays):
    write_mnist_folder(tmp_path, bundled_arrays, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UsageError, match="data.source.*train-images-idx3-ubyte is not a valid IDX file"):
        load_splits(DataConfig(source=f"idx:{tmp_path}"))


# --- torchvision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["torchvision", "auto"])
def test_torchvision_cache_is_read_and_auto_prefers_it(tmp_path, bundled_arrays, source):
    # torchvision's layout: ROOT/MNIST/raw/<name>, decompressed. The files exist, so it does not
    # download; sizes larger than the bundled subset prove auto took these files.
    arrays = dict(bundled_arrays)
    arrays[("test", "images")] = np.concatenate([arrays[("test", "images")]] * 2)
    arrays[("test", "labels")] = np.concatenate([arrays[("test", "labels")]] * 2)
    write_mnist_folder(tmp_path / "MNIST" / "raw", arrays, gz=False)
    s = load_splits(DataConfig(source=source, cache_dir=str(tmp_path), train_size=1000, val_size=200, test_size=4000))
    assert s.source == f"torchvision cache {tmp_path}"
    assert s.test_x.shape == (4000, 1, 28, 28) and s.test_y.dtype == torch.int64
    bundled = load_splits(DataConfig(source="bundled", train_size=1000, val_size=200, test_size=2500))
    assert torch.equal(s.train_x, bundled.train_x) and torch.equal(s.test_x[:2500], bundled.test_x)


@pytest.mark.parametrize("error", [URLError("no route"), OSError("network unreachable")])
def test_auto_beyond_the_bundle_without_cache_fails_with_one_line(tmp_path, monkeypatch, error):
    import torchvision.datasets.mnist

    attempts = []

    def fail(url, *args, **kwargs):
        attempts.append(url)
        raise error

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fail)
    with pytest.raises(MixsearchError) as e:
        load_splits(DataConfig(cache_dir=str(tmp_path), train_size=20000, val_size=1000))
    assert attempts, "auto should have tried torchvision's download"
    message = str(e.value)
    assert "\n" not in message
    assert f"cannot download MNIST into {tmp_path}" in message and "data.source" in message


def test_cifar10_download_failure_is_a_one_line_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    def fail(*args, **kwargs):
        raise URLError("no route")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fail)
    with pytest.raises(MixsearchError, match="^cannot download CIFAR-10 into .*folder:PATH$"):
        load_splits(DataConfig(dataset="cifar10", cache_dir=str(tmp_path)))


# --- CIFAR-10 -------------------------------------------------------------------------------------


def write_cifar_batches(folder, n_per_batch, seed=0):
    """Tiny batches in CIFAR-10's python-pickle layout; returns (train images, train labels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        batch_labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": batch_labels}, f, protocol=2)
        if name != "test_batch":
            images.append(data)
            labels += batch_labels
    return np.concatenate(images).reshape(-1, 3, 32, 32), np.array(labels)


@pytest.mark.parametrize("nested", [True, False])
def test_cifar_folder_reader(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    images, labels = write_cifar_batches(folder, n_per_batch=8)
    s = load_splits(DataConfig(dataset="cifar10", source=f"folder:{tmp_path}", train_size=30, val_size=10, test_size=8))
    assert (s.input_shape, s.num_classes) == ((3, 32, 32), 10)
    assert s.train_x.shape == (30, 3, 32, 32) and s.test_x.shape == (8, 3, 32, 32)
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    train, val = split_indices(40, 30, 10, seed=0)
    assert s.train_y.tolist() == labels[train.numpy()].tolist()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    raw = (s.val_x * std + mean) * 255
    assert torch.allclose(raw, torch.from_numpy(images[val.numpy()]).float(), atol=1e-3)


def test_cifar_auto_reads_a_local_copy_in_the_cache(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", n_per_batch=4)
    s = load_splits(DataConfig(dataset="cifar10", cache_dir=str(tmp_path), train_size=15, val_size=5, test_size=4))
    assert s.source == f"torchvision cache {tmp_path}"


def test_cifar_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="data.source.*cifar-10-batches-py"):
        load_splits(DataConfig(dataset="cifar10", source=f"folder:{tmp_path}"))
    write_cifar_batches(tmp_path, n_per_batch=2)
    with pytest.raises(UsageError, match="data.train_size \\+ data.val_size = 12000 .* 10 training images"):
        load_splits(DataConfig(dataset="cifar10", source=f"folder:{tmp_path}"))


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    write_cifar_batches(tmp_path, n_per_batch=2)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(UsageError, match="test_batch is not a CIFAR-10 batch.*refusing"):
        load_splits(DataConfig(dataset="cifar10", source=f"folder:{tmp_path}", train_size=5, val_size=1, test_size=1))


# --- synthetic ------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_shaped_and_learnable():
    config = DataConfig(dataset="synthetic", image_shape=(3, 16, 16), num_classes=5, train_size=500,
                        val_size=200, test_size=100, seed=2)
    a, b = load_splits(config), load_splits(config)
    other = load_splits(DataConfig(**{**config.__dict__, "seed": 3}))
    assert a.train_x.shape == (500, 3, 16, 16) and a.val_x.shape == (200, 3, 16, 16)
    assert a.test_x.shape == (100, 3, 16, 16)
    assert (a.input_shape, a.num_classes) == ((3, 16, 16), 5)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert set(a.train_y.unique().tolist()) == set(range(5))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, other.train_x)
    assert abs(a.train_x.mean().item()) < 0.1 and abs(a.train_x.std().item() - 1) < 0.1
    assert nearest_mean_accuracy(a) > 0.9
