"""How fast is mixsearch's trainer? Against the loop a user would write, side by side in one run.

    .venv/bin/python bench/trainer.py [--epochs 10] [--seeds 0 1 2] [--dilations 1 2] [--quick]

The reference is plain PyTorch as in the tutorials: a torchvision ``MNIST`` dataset object with
``ToTensor``/``Normalize``, a ``DataLoader`` (batch 64, shuffled), a Mixer written the usual way
(``nn.Linear`` on transposed activations), Adam at lr 1e-3, and an evaluation pass over a test
``DataLoader`` after every epoch. mixsearch trains the same arch (its own model class, equal
parameter count) with ``mixsearch.train.train`` on the same images, batch size, epochs and
optimizer, evaluating on the same test images after every epoch. Protocol: the dilated-patch
experiment of the design notes (10,000 train / 2,500 test images, 10 epochs), Mixer P4 C16
D_S 64 D_C 64 L4 at dilation 1 and 2.

Printed: img/s of each (training images over the wall time of the whole training call, per-epoch
evaluation included, dataset construction excluded), their ratio, test accuracy mean ± std over
the seeds, the machine's fp32 matmul peak and the share of it the trainer reaches. Every training
runs in a fresh process, so none inherits another's state (the C allocator's heap, torch's caches
and warm-ups), and the two trainers alternate run by run, so load from other processes hits both
alike; ratios are the figures to read. About 12 minutes on two CPU cores for the full protocol;
``--quick`` (1 epoch, one seed) takes about one.

MNIST files: ``--mnist DIR`` (a folder of the four IDX files, gzipped or not, e.g. the full set);
by default the package's bundled subset, whose 12,000 / 2,500 images hold the protocol's. They are
decompressed into a temporary ``ROOT/MNIST/raw`` so torchvision reads them without downloading.

Threads: ``--threads`` (default 1) for both. On a machine shared with other work, two OpenMP
threads per process on two cores slow both trainers down several times over; one thread per
process is also what each worker of ``mixsearch run --jobs 2`` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixsearch.arch import MixerArch, patch_span  # noqa: E402
from mixsearch.data import MNIST_FILES, Splits, bundled_mnist_dir  # noqa: E402
from mixsearch.models import build_model, count_params  # noqa: E402
from mixsearch.models.mixer import MixerLayer  # noqa: E402
from mixsearch.train import TrainRecipe, flat_parameters, train  # noqa: E402

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
BATCH_SIZE, LR = 64, 1e-3


# --------------------------------------------------------------------------- the reference, as a user writes it


class PlainMixerLayer(nn.Module):
    def __init__(self, tokens, channels, token_hidden, channel_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(channels)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, channel_hidden), nn.GELU(),
                                         nn.Linear(channel_hidden, channels))

    def forward(self, x):  # x: (batch, tokens, channels)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class PlainMixer(nn.Module):
    def __init__(self, layers=4, channels=16, token_hidden=64, channel_hidden=64, patch_size=4, dilation=1,
                 image_size=28, num_classes=10):
        super().__init__()
        self.span = patch_span(patch_size, dilation)
        tokens = math.ceil(image_size / self.span) ** 2
        self.patch = nn.Conv2d(1, channels, patch_size, stride=self.span, dilation=dilation)
        self.layers = nn.Sequential(*[PlainMixerLayer(tokens, channels, token_hidden, channel_hidden)
                                      for _ in range(layers)])
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        pad = -x.shape[-1] % self.span
        x = self.patch(F.pad(x, (0, pad, 0, pad))).flatten(2).transpose(1, 2)
        x = self.layers(x)
        return self.head(self.norm(x).mean(dim=1))


def reference_datasets(root: Path, train_size: int, test_size: int):
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    train_set = datasets.MNIST(str(root), train=True, transform=transform, download=False)
    test_set = datasets.MNIST(str(root), train=False, transform=transform, download=False)
    return (torch.utils.data.Subset(train_set, range(train_size)),
            torch.utils.data.Subset(test_set, range(test_size)))


def reference_accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    return correct / total


def reference_train(model, train_set, test_set, epochs: int) -> float:
    """The tutorial loop; returns the test accuracy after the last epoch."""
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
        accuracy = reference_accuracy(model, test_loader)
        if sys.stdout.isatty():  # a progress line that the next one overwrites; in a log it would pile up
            print(f"  epoch test accuracy {accuracy:.4f}", end="\r", flush=True)
    return accuracy


# --------------------------------------------------------------------------- data and machine


def torchvision_root(mnist_dir: Path, workdir: Path) -> Path:
    """ROOT with ROOT/MNIST/raw/<the four files, decompressed>, which torchvision reads offline."""
    raw = workdir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES.values():
        plain, packed = mnist_dir / name, mnist_dir / f"{name}.gz"
        data = plain.read_bytes() if plain.is_file() else gzip.decompress(packed.read_bytes())
        (raw / name).write_bytes(data)
    return workdir


def splits_from(train_set, test_set) -> Splits:
    """The same images as tensors, normalized as ToTensor/Normalize do; validation = the test images."""
    def tensors(subset):
        images = subset.dataset.data[list(subset.indices)].unsqueeze(1).float().div_(255)
        return (images - MNIST_MEAN) / MNIST_STD, subset.dataset.targets[list(subset.indices)].long()

    train_x, train_y = tensors(train_set)
    test_x, test_y = tensors(test_set)
    return Splits(train_x, train_y, test_x, test_y, test_x, test_y, (1, 28, 28), 10, "bench")


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def training_flops_per_image(model: nn.Module) -> float:
    """Forward FLOPs of one image times 3: the backward pass costs about twice the forward."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    return 3.0 * counter.get_total_flops()


# --------------------------------------------------------------------------- what each change gives


def ablation_variants(dilation: int) -> dict:
    """name → (model factory, optimizer options, threads, bf16 autocast, flat parameters)."""
    def plain():
        return PlainMixer(dilation=dilation)

    def ours():
        return build_model(mixer_arch(dilation))

    def compiled_layers():
        # One compiled layer function for every arch of a search: dynamic shapes, shared by all.
        model = ours()
        for layer in model.layers:
            layer.forward = functools.partial(compiled_mixer_layer(), layer)
        return model

    fused = {"fused": True}
    return {
        "plain model, Adam per-tensor loop": (plain, {}, 1, False, False),
        "plain model, Adam foreach": (plain, {"foreach": True}, 1, False, False),
        "plain model, Adam fused": (plain, fused, 1, False, False),
        "token-major model, Adam per-tensor loop": (ours, {}, 1, False, False),
        "token-major model, Adam fused": (ours, fused, 1, False, False),
        "token-major model, Adam fused, flat parameters (the trainer)": (ours, fused, 1, False, True),
        "the trainer, bf16 autocast": (ours, fused, 1, True, True),
        "the trainer, 2 threads": (ours, fused, 2, False, True),
        "the trainer, Mixer layers compiled (dynamic shapes)": (compiled_layers, fused, 1, False, True),
    }


@functools.cache
def compiled_mixer_layer():
    return torch.compile(MixerLayer.forward, dynamic=True)


def time_steps(factory, optimizer_options, threads, bf16, flat, splits, steps: int) -> tuple[float, float]:
    """(img/s of ``steps`` training steps on tensors (no DataLoader), seconds of the 5 warm-up steps
    before them: where a compiled model compiles)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = factory()
    order = torch.randint(0, len(splits.train_y), (steps + 5, BATCH_SIZE))
    with flat_parameters(model) if flat else contextlib.nullcontext(list(model.parameters())) as params:
        optimizer = torch.optim.Adam(params, lr=LR, **optimizer_options)
        warm_up = time.perf_counter()
        for i, index in enumerate(order):
            if i == 5:
                started = time.perf_counter()
                warm_up = started - warm_up
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(splits.train_x[index]), splits.train_y[index])
            optimizer.zero_grad(set_to_none=not flat)  # flat: the gradients are views backward adds into
            loss.backward()
            optimizer.step()
        return steps * BATCH_SIZE / (time.perf_counter() - started), warm_up


def ablation(splits, dilations, rounds: int, steps: int) -> None:
    """Training steps only, each variant in turn, ``rounds`` times; medians, as ratios to the first."""
    for dilation in dilations:
        variants = ablation_variants(dilation)
        speeds = {name: [] for name in variants}
        warm_ups = {name: [] for name in variants}
        for round_ in range(rounds):
            for name, variant in variants.items():
                speed, warm_up = time_steps(*variant, splits, steps)
                speeds[name].append(speed)
                warm_ups[name].append(warm_up)
                print(f"dilation {dilation} round {round_} {name}: {speed:,.0f} img/s, warm-up {warm_up:.1f} s",
                      flush=True)
        base = statistics.median(speeds[next(iter(variants))])
        print(f"\ndilation {dilation}: {steps} steps of batch {BATCH_SIZE}, median of {rounds} rounds")
        print("| variant | img/s | ratio | first round's 5 warm-up steps |\n| --- | --- | --- | --- |")
        for name, values in speeds.items():
            print(f"| {name} | {statistics.median(values):,.0f} | {statistics.median(values) / base:.2f}× "
                  f"| {warm_ups[name][0]:.1f} s |")


# --------------------------------------------------------------------------- the comparison


def mixer_arch(dilation: int) -> MixerArch:
    return MixerArch(in_channels=1, image_size=(28, 28), num_classes=10, layers=4, channels=16, token_hidden=64,
                     channel_hidden=64, patch_size=4, dilation=dilation)


def timed_run(trainer, dilation, seed, root, sizes, epochs, threads) -> tuple[float, float]:
    """(seconds, test accuracy) of one training, in the process that calls it: datasets built from
    ``root`` first (not timed), then the training call timed."""
    torch.set_num_threads(threads)
    train_set, test_set = reference_datasets(root, *sizes)
    torch.manual_seed(seed)
    if trainer == "reference":
        model = PlainMixer(dilation=dilation)
        started = time.perf_counter()
        accuracy = reference_train(model, train_set, test_set, epochs)
        return time.perf_counter() - started, accuracy
    splits = splits_from(train_set, test_set)
    model = build_model(mixer_arch(dilation))
    recipe = TrainRecipe(epochs=epochs, batch_size=BATCH_SIZE, optimizer="adam", lr=LR, schedule="constant",
                         weight_decay=0.0, device="cpu")
    started = time.perf_counter()
    result = train(model, splits, recipe, seed=seed)
    return time.perf_counter() - started, result.val_accuracy


def in_fresh_process(function, *args):
    """``function(*args)`` in a new Python process: no run inherits another's state (the C
    allocator's heap, torch's caches and warm-ups)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dilations", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-size", type=int, default=2_500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both")
    parser.add_argument("--mnist", type=Path, default=None, help="folder of the four MNIST IDX files")
    parser.add_argument("--quick", action="store_true", help="1 epoch, seed 0: about a minute")
    parser.add_argument("--ablation", type=int, metavar="ROUNDS", default=0,
                        help="instead: time training steps of each variant "
                             "(model, optimizer, threads, bf16, compilation)")
    parser.add_argument("--steps", type=int, default=100, help="steps per variant and round, for --ablation")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds = 1, [0]
    torch.set_num_threads(args.threads)
    mnist_dir = args.mnist or Path(str(bundled_mnist_dir()))

    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(mnist_dir, Path(tmp))
        sizes = (args.train_size, args.test_size)
        if args.ablation:
            return ablation(splits_from(*reference_datasets(root, *sizes)), args.dilations, args.ablation, args.steps)
        peak = matmul_peak_gflops()
        print(f"MNIST from {mnist_dir}: {sizes[0]:,} train / {sizes[1]:,} test images; "
              f"{args.epochs} epochs, batch {BATCH_SIZE}, Adam lr {LR:g} constant; seeds {args.seeds}; "
              f"{args.threads} torch threads; fp32 matmul peak {peak:.0f} GFLOP/s")
        contenders = ["reference", "mixsearch"]
        rows = []
        for dilation in args.dilations:
            params = count_params(build_model(mixer_arch(dilation)))
            plain_params = count_params(PlainMixer(dilation=dilation))
            assert params == plain_params, (params, plain_params)
            times = {who: [] for who in contenders}
            accuracy = {who: [] for who in contenders}
            for i, seed in enumerate(args.seeds):
                # Alternate who goes first, so a burst of outside load does not always hit one.
                for who in contenders[i % 2:] + contenders[:i % 2]:
                    seconds, acc = in_fresh_process(timed_run, who, dilation, seed, root, sizes, args.epochs,
                                                    args.threads)
                    times[who].append(seconds)
                    accuracy[who].append(acc)
                    print(f"dilation {dilation} seed {seed} {who:<9} {seconds:7.1f} s  "
                          f"{sizes[0] * args.epochs / seconds:7.0f} img/s  test accuracy {acc:.4f}", flush=True)
            images = sizes[0] * args.epochs * len(args.seeds)
            speed = {who: images / sum(t) for who, t in times.items()}
            flops = training_flops_per_image(build_model(mixer_arch(dilation)))
            rows.append((dilation, build_model(mixer_arch(dilation)).arch.num_tokens, params, speed, accuracy,
                         speed["mixsearch"] * flops / 1e9 / peak))
    print("\n| dilation | reference img/s | mixsearch img/s | ratio | reference test acc | mixsearch test acc "
          "| trainer share of matmul peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dilation, tokens, params, speed, accuracy, share in rows:
        print(f"| {dilation} ({tokens} tokens, {params:,} params) | {speed['reference']:,.0f} | "
              f"{speed['mixsearch']:,.0f} | {speed['mixsearch'] / speed['reference']:.2f}× | "
              f"{mean_std(accuracy['reference'])} | {mean_std(accuracy['mixsearch'])} | {share:.1%} |")


if __name__ == "__main__":
    main()
