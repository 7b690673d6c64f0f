"""Where does MobileNet fusion pay? One fixed net per fusion layout: memory and latency side by side.

    .venv/bin/python bench/fusion.py [--rounds 5] [--min-time 0.4]

The net is the MNIST MobileNet of spaces/mnist-mobilenet.yaml at its widest: stem 16 (stride 2),
five 3×3 blocks of widths 32-48-48-32-32 and strides 1,2,1,2,1, at batch 1 on one thread. Each
layout sets every block's mode (``separable``, ``linear``, ``fused``) or fuses the first k blocks
and keeps the rest separable. Printed per layout: training and inference params, peak inference
memory (weights + activations alive at once) and the activations written in one pass, and the
latency in onnxruntime and eager torch, median of ``--rounds`` interleaved rounds (every layout once
per round, so load from other processes hits all alike).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixsearch.arch import BlockArch, MobileNetArch  # noqa: E402
from mixsearch.measure import static_sizes  # noqa: E402
from mixsearch.measure.latency import measure_latency  # noqa: E402
from mixsearch.models import build_model, inference_model  # noqa: E402

WIDTHS = (32, 48, 48, 32, 32)
STRIDES = (1, 2, 1, 2, 1)
LAYOUTS = {
    "all separable": ("separable",) * 5,
    "all linear": ("linear",) * 5,
    "all fused": ("fused",) * 5,
    "fused first 1": ("fused",) + ("separable",) * 4,
    "fused first 2": ("fused",) * 2 + ("separable",) * 3,
    "fused first 3": ("fused",) * 3 + ("separable",) * 2,
}


def net(modes: tuple[str, ...]) -> MobileNetArch:
    blocks = tuple(BlockArch(w, 3, s, m) for w, s, m in zip(WIDTHS, STRIDES, modes))
    return MobileNetArch(1, (28, 28), 10, 16, blocks, stem_stride=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.4, help="seconds of timing per layout and round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (1, 28, 28)
    models, sizes = {}, {}
    for name, modes in LAYOUTS.items():
        torch.manual_seed(0)
        models[name] = inference_model(build_model(net(modes)))
        sizes[name] = static_sizes(net(modes), shape)
    times = {(name, runtime): [] for name in LAYOUTS for runtime in ("onnxruntime", "torch")}
    for _ in range(args.rounds):
        for runtime in ("onnxruntime", "torch"):
            for name, model in models.items():
                times[name, runtime].append(measure_latency(model, shape, runtime, 1, 1, args.min_time).ms)
    print("| layout | params (train / inference) | peak memory (weights + activations) | activations written "
          "| onnxruntime | torch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in LAYOUTS:
        s, m = sizes[name], sizes[name].memory
        ort = statistics.median(times[name, "onnxruntime"])
        eager = statistics.median(times[name, "torch"])
        print(f"| {name} | {s.params:,} / {s.inference_params:,} | {m.peak_bytes / 1024:.1f} KiB "
              f"({m.weight_bytes / 1024:.1f} + {m.peak_activation_bytes / 1024:.1f}) | "
              f"{m.activation_bytes_written / 1024:.1f} KiB | {ort:.3f} ms | {eager:.3f} ms |")


if __name__ == "__main__":
    main()
