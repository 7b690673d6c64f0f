"""Does the search-time latency rank archs the way they run? Both runtimes, side by side in one run.

    .venv/bin/python bench/latency.py [--mixer 20] [--mobilenet 10] [--careful-factor 10] [--seed 0]
        [--runtimes onnxruntime torch]

Archs are drawn with Optuna's RandomSampler from the spaces of spaces/mnist.yaml and
spaces/mnist-mobilenet.yaml (distinct archs only). For each runtime (onnxruntime, torch) the
reference network is timed as a study does when it is created, then every arch is measured as the
search measures it (a fresh model, export and session, the runtime's default ``latency_min_time``,
against that reference figure, in two halves: the first for every arch, then the second for every
arch, so that seconds pass between an arch's halves as a trial's training puts them apart) twice,
independently, and then carefully: ``--careful-factor`` times the
time, in interleaved rounds (every arch once per round) so that a slow spell of the machine hits
all archs alike, each round spending its whole time (no early stop). The careful measurement is taken twice: the same way (against the reference),
and as plain time on the thread's clock, with no reference. It prints per runtime:

- Kendall τ between the two search-time measurements (goal ≥ 0.95);
- Kendall τ between the first search-time measurement and each careful one (goal ≥ 0.95);
- the median relative spread of the two search-time measurements of one arch, |a - b| / mean(a, b)
  (goal ≤ 2%), and the spread of two timings of the reference network itself (two studies' figures);
- which pairs of archs swap places, and how far apart they lie in the careful measurement;
- the measurement cost per arch (export, session, timing; or timing alone for torch) against the
  median training time of a default-study trial (goal ≤ 5%). That training time is one epoch of the
  default recipe on the default data, timed for every drawn Mixer arch (``--train-archs``), times
  the recipe's epochs; the median over them.

About 25 minutes on two CPU cores (most of it the careful measurements).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixsearch.arch import arch_hash  # noqa: E402
from mixsearch.data import dataset_info, load_splits  # noqa: E402
from mixsearch.errors import ArchError  # noqa: E402
from mixsearch.measure import MeasureConfig  # noqa: E402
from mixsearch.measure.latency import (measure_latency, reference_latency, runtime_call,  # noqa: E402
                                       start_latency, time_calls)
from mixsearch.models import build_model, inference_model  # noqa: E402
from mixsearch.spec import load_spec  # noqa: E402
from mixsearch.train import train  # noqa: E402

RUNTIMES = ("onnxruntime", "torch")


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's τ-b: concordant minus discordant pairs, corrected for ties."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")


def swapped_gaps(a: list[float], b: list[float], truth: list[float]) -> list[float]:
    """For each pair of archs that ``a`` and ``b`` order differently: how far apart the two lie in
    ``truth`` (relative to the faster). Says whether the swaps are of archs a deployment could tell apart."""
    gaps = []
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            if (a[i] - a[j]) * (b[i] - b[j]) < 0:
                gaps.append(abs(truth[i] - truth[j]) / min(truth[i], truth[j]))
    return gaps


def describe_swaps(gaps: list[float], pairs: int) -> str:
    if not gaps:
        return f"0 of {pairs} pairs swapped"
    return (f"{len(gaps)} of {pairs} pairs swapped, {sum(g <= 0.01 for g in gaps)} of them within 1% of each other "
            f"in the careful figure, the farthest {max(gaps):.1%} apart")


def draw_archs(spec_path: Path, count: int, seed: int):
    spec = load_spec(spec_path)
    input_shape, num_classes = dataset_info(spec.data)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    archs, seen = [], set()
    for _ in range(count * 50):
        trial = study.ask()
        try:
            arch = spec.space.sample(trial, input_shape, num_classes)
        except ArchError:
            continue
        if arch_hash(arch) not in seen:
            seen.add(arch_hash(arch))
            archs.append(arch)
        if len(archs) == count:
            break
    return spec, input_shape, archs


def search_times(archs, input_shape, runtime: str, min_time: float, reference_ms: float,
                 ) -> tuple[list[float], list[float]]:
    """(ms, seconds spent) per arch, measured as trials measure them: a fresh model, export, session
    and the first half of the time for each arch, then the second half for each. An arch's halves
    lie one pass over all archs apart (about 10 s for 30 archs), as a trial's training sets them."""
    splits, costs = [], []
    for arch in archs:
        torch.manual_seed(0)
        model = inference_model(build_model(arch))
        started = time.perf_counter()
        splits.append(start_latency(model, input_shape, runtime, 1, 1, min_time, reference_ms))
        costs.append(time.perf_counter() - started)
    figures = []
    for i, split in enumerate(splits):
        started = time.perf_counter()
        figures.append(split.time_half().ms)
        split.close()
        costs[i] += time.perf_counter() - started
    return figures, costs


def careful_times(archs, input_shape, runtime: str, seconds: float, rounds: int, reference_ms: float):
    """Per arch: the median over interleaved rounds, against the reference and as plain thread time."""
    relative: list[list[float]] = [[] for _ in archs]
    plain: list[list[float]] = [[] for _ in archs]
    models = []
    for arch in archs:
        torch.manual_seed(0)
        models.append(inference_model(build_model(arch)))
    example = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    calls = [runtime_call(model, example, runtime, 1) for model in models]
    for _ in range(rounds):
        for i, model in enumerate(models):
            relative[i].append(measure_latency(model, input_shape, runtime, 1, 1, seconds / rounds, reference_ms,
                                               early_stop=False).ms)  # the whole time, every round
            plain[i].append(time_calls(calls[i], seconds / rounds).ms)
    return [statistics.median(r) for r in relative], [statistics.median(p) for p in plain]


def trial_train_seconds(spec_path: Path, archs) -> float:
    spec = load_spec(spec_path)
    splits = load_splits(spec.data)
    recipe = spec.sample_recipe(optuna.create_study().ask())
    seconds = []
    for arch in archs:
        torch.manual_seed(0)
        model = build_model(arch)
        result = train(model, splits, recipe.__class__(**{**recipe.to_dict(), "epochs": 1}), seed=0)
        seconds.append(result.train_seconds * recipe.epochs)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixer", type=int, default=20)
    parser.add_argument("--mobilenet", type=int, default=10)
    parser.add_argument("--careful-factor", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the careful measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--train-archs", type=int, default=20,
                        help="drawn Mixer archs whose training time makes the median trial (one epoch each)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)

    spec, input_shape, mixers = draw_archs(ROOT / "spaces/mnist.yaml", args.mixer, args.seed)
    _, _, mobilenets = draw_archs(ROOT / "spaces/mnist-mobilenet.yaml", args.mobilenet, args.seed)
    archs = mixers + mobilenets
    min_times = {runtime: MeasureConfig(runtime=runtime).latency_min_time for runtime in args.runtimes}
    print(f"{len(mixers)} Mixer + {len(mobilenets)} MobileNet archs; search-time latency_min_time "
          + ", ".join(f"{seconds} s ({runtime})" for runtime, seconds in min_times.items())
          + f", careful {args.careful_factor}x in {args.rounds} interleaved rounds; batch 1, 1 thread")

    # The median of a few archs swung from 8 to 44 s between draws; over all of them it is steadier.
    trained = mixers[:args.train_archs]
    train_seconds = trial_train_seconds(ROOT / "spaces/mnist.yaml", trained)
    epochs = spec.sample_recipe(optuna.create_study().ask()).epochs
    print(f"default-study trial training time (median of {len(trained)} archs, 1 epoch x {epochs}): "
          f"{train_seconds:.1f} s")
    rows, swaps = [], []
    for runtime in args.runtimes:
        min_time = min_times[runtime]
        reference_ms = reference_latency(input_shape, runtime, 1, 1, min_time)  # as a study does when created
        reference_again = reference_latency(input_shape, runtime, 1, 1, min_time)
        first, costs = search_times(archs, input_shape, runtime, min_time, reference_ms)
        second, _ = search_times(archs, input_shape, runtime, min_time, reference_ms)
        careful, plain = careful_times(archs, input_shape, runtime, min_time * args.careful_factor, args.rounds,
                                       reference_ms)
        spread = statistics.median(abs(a - b) / ((a + b) / 2) for a, b in zip(first, second))
        reference_spread = abs(reference_ms - reference_again) / ((reference_ms + reference_again) / 2)
        cost = statistics.median(costs)
        rows.append((runtime, kendall_tau(first, second), kendall_tau(first, careful), kendall_tau(first, plain),
                     spread, reference_spread, cost, cost / train_seconds, min(careful), max(careful)))
        pairs = len(archs) * (len(archs) - 1) // 2
        swaps.append(f"{runtime}: search vs search: {describe_swaps(swapped_gaps(first, second, careful), pairs)}; "
                     f"search vs careful: {describe_swaps(swapped_gaps(first, careful, careful), pairs)}")

    print()
    print("| runtime | τ search vs search | τ search vs careful | τ search vs careful plain time | median spread "
          "| reference spread | cost per arch | cost / trial training | latency range |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for runtime, tau_repeat, tau_careful, tau_plain, spread, reference_spread, cost, share, low, high in rows:
        print(f"| {runtime} | {tau_repeat:.3f} | {tau_careful:.3f} | {tau_plain:.3f} | {spread:.1%} | "
              f"{reference_spread:.1%} | {cost * 1e3:.0f} ms | {share:.1%} | {low:.3f}–{high:.3f} ms |")
    print("goals: τ ≥ 0.95, spread ≤ 2%, cost ≤ 5% of a trial's training")
    print()
    print("\n".join(swaps))


if __name__ == "__main__":
    main()
