"""Evaluation batches: sized to the cache (``mixsearch.train.eval_batch_size``) against a fixed 1,000.

    .venv/bin/python bench/evaluation.py [--archs 12] [--seed 0] [--images 4500] [--rounds 3] [--threads 1]
        [--budgets-mib 16]

Draws ``--archs`` distinct archs from ``spaces/mnist.yaml`` (Optuna's RandomSampler, ``--seed``, as
``bench/latency.py`` draws them) and times,
for each, ``mixsearch.train.evaluate`` over ``--images`` bundled MNIST images (what a trial of the
default study evaluates after training: 2,000 training and 2,500 test images) at a batch of 1,000,
at the batch ``eval_batch_size`` picks (its budget of activations, ``EVAL_ACTIVATION_BYTES``) and at
the batch each other budget of ``--budgets-mib`` would pick, in turns, ``--rounds`` times; medians,
side by side, as ratios to the default. Then, for the drawn arch with the most activations per
image, the peak RSS of a fresh process that evaluates it at a batch of 1,000 and at its batch
(imports, data and model included). About two minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import draw_archs  # noqa: E402  (bench/latency.py: distinct archs, seeded)

from mixsearch.arch import arch_from_dict  # noqa: E402
from mixsearch.data import load_splits  # noqa: E402
from mixsearch.measure import static_sizes  # noqa: E402
from mixsearch.models import build_model  # noqa: E402
from mixsearch.spec import load_spec  # noqa: E402
from mixsearch.train import EVAL_ACTIVATION_BYTES, MAX_EVAL_BATCH, eval_batch_size, evaluate  # noqa: E402

SPEC = ROOT / "spaces" / "mnist.yaml"


def images_to_evaluate(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    splits = load_splits(load_spec(str(SPEC)).data)
    images = torch.cat([splits.train_x, splits.test_x])[:count]
    return images, torch.cat([splits.train_y, splits.test_y])[:count]


def seconds(model, images, labels, batch_size: int) -> float:
    started = time.perf_counter()
    evaluate(model, images, labels, batch_size)
    return time.perf_counter() - started


def peak_rss_child(arch: dict, batch_size: int, count: int, threads: int) -> float:
    """GiB: the peak RSS of a fresh process evaluating ``arch`` at ``batch_size``."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(arch), str(batch_size), str(count),
                          str(threads)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def child(arch_json: str, batch_size: str, count: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    images, labels = images_to_evaluate(int(count))
    model = build_model(arch_from_dict(json.loads(arch_json)))
    evaluate(model, images, labels, int(batch_size))
    print(peak_rss_gib())


def peak_rss_gib() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the process image, where ``ru_maxrss``
    carries over the RSS of the parent that spawned it (which here has run the timings)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:6])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=4500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--budgets-mib", type=float, nargs="*", default=[16],
                        help="other budgets of activations per batch to time beside the default's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = images_to_evaluate(args.images)
    archs = draw_archs(SPEC, args.archs, args.seed)[2]
    default = f"{EVAL_ACTIVATION_BYTES / 2**20:g} MiB"
    budgets = {f"{mib:g} MiB": int(mib * 2**20) for mib in args.budgets_mib}
    budgets.pop(default, None)
    names = ["1,000", *budgets, default]
    print(f"{len(images):,} bundled MNIST images; {len(archs)} archs from {SPEC.name} (seed {args.seed}); "
          f"{args.threads} torch thread(s); medians of {args.rounds} rounds in turns; batches: a fixed 1,000, "
          f"and sized to {', '.join(names[1:])} of activations ({default}: eval_batch_size's default)", flush=True)
    print("\n| arch | activations per image | " + " | ".join(f"batch at {name}" for name in names[1:]) + " | "
          + " | ".join(f"at {name}" for name in names) + " | " + " | ".join(f"{name} / {default}" for name in names[:-1])
          + " |")
    print("|" + " --- |" * (2 + 2 * len(names) - 1 + len(names) - 1))
    totals = dict.fromkeys(names, 0.0)
    largest = None
    for arch in archs:
        model = build_model(arch)
        batches = {"1,000": MAX_EVAL_BATCH, **{name: eval_batch_size(model, images, size) for name, size in budgets.items()},
                   default: eval_batch_size(model, images)}
        per_image = static_sizes(arch, tuple(images.shape[1:])).memory.peak_activation_bytes
        if largest is None or per_image > largest[1]:
            largest = (arch, per_image, batches[default])
        times = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in (names if round_ % 2 == 0 else names[::-1]):
                times[name].append(seconds(model, images, labels, batches[name]))
        medians = {name: statistics.median(times[name]) for name in names}
        for name in names:
            totals[name] += medians[name]
        print(f"| {arch.describe()} | {per_image / 1024:,.0f} KiB | " + " | ".join(str(batches[n]) for n in names[1:])
              + " | " + " | ".join(f"{medians[n] * 1e3:,.0f} ms" for n in names) + " | "
              + " | ".join(f"{medians[n] / medians[default]:.2f}×" for n in names[:-1]) + " |", flush=True)
    print(f"| all {len(archs)} | |" + " |" * (len(names) - 1) + " " + " | ".join(f"{totals[n]:.2f} s" for n in names)
          + " | " + " | ".join(f"**{totals[n] / totals[default]:.2f}×**" for n in names[:-1]) + " |")
    arch, per_image, batch = largest
    rss = {size: peak_rss_child(arch.to_dict(), size, args.images, args.threads) for size in (MAX_EVAL_BATCH, batch)}
    print(f"\npeak RSS of a process evaluating {arch.describe()} ({per_image / 1024:,.0f} KiB of activations "
          f"per image): {rss[MAX_EVAL_BATCH]:.2f} GiB at a batch of {MAX_EVAL_BATCH}, {rss[batch]:.2f} GiB at "
          f"its batch of {batch}")


if __name__ == "__main__":
    main()
