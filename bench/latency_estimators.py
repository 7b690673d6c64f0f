"""Which figure of a latency measurement repeats best? Several estimators from the same raw blocks.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/latency_estimators.py [--seed 0] [--runtime torch]
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/latency_estimators.py --stopping [--seed 0]
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/latency_estimators.py --halves [--seed 0]

Draws the archs bench/latency.py draws (20 from spaces/mnist.yaml, 10 from
spaces/mnist-mobilenet.yaml), measures each twice in the runtime as a trial does (fresh export and
session, blocks of about 0.5 ms alternating with the reference network, ``latency_min_time`` 0.2 s),
then once carefully (``--careful-factor`` times as long), keeps every block time, and prints for
each estimator Kendall τ between the two measurements, τ between the first and the careful one
(the same estimator on the longer measurement), and the median relative spread of the two,
|a - b| / mean(a, b). About two minutes on two CPU cores.

``--stopping`` compares when a measurement stops instead, all with the fastest-block figure: after
a fixed time (0.2, 0.3 and 0.4 s), or as trials do, after 0.2 s unless the reference never ran
at full speed, then on until it does (``time_relative``; full speed is the reference's figure,
timed first as a study does). Every arch is measured twice by every rule, the rules in a shuffled
order per arch, so a slow spell of the machine falls on all of them alike; printed: τ between the
two measurements of each rule, their median spread, and the seconds one measurement took (arch
and reference blocks). About three minutes.

``--halves`` compares one measurement of ``--min-time`` (``time_relative``, as trials took it
before) with the faster of two measurements of half that time taken a whole pass over the other
archs apart, as trials now time half before their training and half after. Both are taken twice;
printed: τ between the two, τ of the first against a careful figure (the median of three
measurements of twice the time), the median spread and the pairs of archs swapped. About two
minutes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import draw_archs, kendall_tau, swapped_gaps  # noqa: E402

from mixsearch.measure import latency as timing  # noqa: E402
from mixsearch.models import build_model, inference_model  # noqa: E402


def raw_blocks(arch, input_shape, runtime: str, min_time: float) -> tuple[list[float], list[float], list[float]]:
    """(arch blocks, reference blocks, per-block ratios) of one measurement, as a trial takes them."""
    torch.manual_seed(0)
    model = inference_model(build_model(arch))
    reference = timing.reference_call(tuple(input_shape), runtime, 1, 1)
    call = timing.runtime_call(model, timing._example(input_shape, 1), runtime, 1)
    return timing.interleaved_blocks(call, reference, min_time)


def study_reference(archs, runtime: str, min_time: float) -> timing.Reference:
    """The reference network and its figure, timed as a study does when it is created."""
    shape = tuple(archs[0][1])  # both spaces take MNIST images: one reference serves them
    return timing.Reference(timing.reference_call(shape, runtime, 1, 1),
                            timing.reference_latency(shape, runtime, 1, 1, min_time))


def stopping_rules(archs, runtime: str, seed: int) -> None:
    """τ, spread and seconds per measurement of each stopping rule (see the module's docstring)."""
    reference = study_reference(archs, runtime, 0.2)

    def fixed(seconds):
        def measure(call):
            blocks, reference_blocks, _ = timing.interleaved_blocks(call, reference.call, seconds)
            return timing.fastest(blocks) / timing.fastest(reference_blocks) * reference.ms
        return measure

    rules = {"fixed 0.2 s": fixed(0.2), "fixed 0.3 s": fixed(0.3), "fixed 0.4 s": fixed(0.4),
             "0.2 s, on until full speed (used)": lambda call: timing.time_relative(call, reference, 0.2).ms}
    figures = {name: ([], []) for name in rules}
    seconds = {name: [] for name in rules}
    order = random.Random(seed)
    for repeat in range(2):
        for arch, input_shape in archs:
            names = list(rules)
            order.shuffle(names)
            for name in names:
                torch.manual_seed(0)
                model = inference_model(build_model(arch))
                call = timing.runtime_call(model, timing._example(input_shape, 1), runtime, 1)
                started = time.perf_counter()
                figures[name][repeat].append(rules[name](call))
                seconds[name].append(time.perf_counter() - started)
    print(f"{len(archs)} archs, {runtime}, each measured twice by every rule, seed {seed}\n")
    print("| stopping rule | τ between the two | median spread | seconds per measurement |\n| --- | --- | --- | --- |")
    for name, (one, two) in figures.items():
        spread = statistics.median(abs(x - y) / ((x + y) / 2) for x, y in zip(one, two))
        print(f"| {name} | {kendall_tau(one, two):.3f} | {spread:.1%} | {statistics.mean(seconds[name]):.3f} |")


def halves_against_one(archs, runtime: str, seed: int, min_time: float) -> None:
    """One measurement of ``min_time`` against the faster of two of half that time, taken a whole
    pass over the other archs apart (about 15 s, as a trial's training would separate them)."""
    reference = study_reference(archs, runtime, min_time)
    calls = []
    for arch, input_shape in archs:  # one session per arch: a session has no speed of its own
        torch.manual_seed(0)
        calls.append(timing.runtime_call(inference_model(build_model(arch)), timing._example(input_shape, 1),
                                         runtime, 1))
    whole: list[list[float]] = [[], []]
    halves: list[list[list[float]]] = [[[] for _ in calls], [[] for _ in calls]]
    for repeat in range(2):
        for part in range(2):  # the whole measurement sits beside the first half, in the same pass
            for i, call in enumerate(calls):
                if part == 0:
                    whole[repeat].append(timing.time_relative(call, reference, min_time).ms)
                halves[repeat][i].append(timing.time_relative(call, reference, min_time / 2).ms)
    careful = [statistics.median(timing.time_relative(call, reference, 2 * min_time).ms for _ in range(3))
               for call in calls]
    rules = {f"one measurement of {min_time:g} s": whole,
             f"the faster of two of {min_time / 2:g} s, a pass apart (used)": [[min(h) for h in halves[r]]
                                                                            for r in range(2)]}
    print(f"{len(archs)} archs, {runtime}, each measured twice by both rules, seed {seed}\n")
    print("| rule | τ between the two | τ first vs careful | median spread | pairs swapped between the two |\n"
          "| --- | --- | --- | --- | --- |")
    for name, (one, two) in rules.items():
        spread = statistics.median(abs(x - y) / ((x + y) / 2) for x, y in zip(one, two))
        print(f"| {name} | {kendall_tau(one, two):.3f} | {kendall_tau(one, careful):.3f} | {spread:.1%} | "
              f"{len(swapped_gaps(one, two, careful))} |")


def quantile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` of ``values`` (no interpolation)."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


ESTIMATORS = {
    "median of per-block ratios": lambda a, r, x: statistics.median(x),
    "25%-trimmed mean of ratios": lambda a, r, x: statistics.mean(sorted(x)[len(x) // 4: -(len(x) // 4)]),
    "10th percentile of ratios": lambda a, r, x: quantile(x, 0.10),
    "q25 arch / q25 reference": lambda a, r, x: quantile(a, 0.25) / quantile(r, 0.25),
    "q10 arch / q10 reference": lambda a, r, x: quantile(a, 0.10) / quantile(r, 0.10),
    "median arch / median reference": lambda a, r, x: statistics.median(a) / statistics.median(r),
    "q05 arch / q05 reference": lambda a, r, x: quantile(a, 0.05) / quantile(r, 0.05),
    "q02 arch / q02 reference": lambda a, r, x: quantile(a, 0.02) / quantile(r, 0.02),
    "min arch / min reference (used)": lambda a, r, x: timing.fastest(a) / timing.fastest(r),
    "plain median of arch blocks": lambda a, r, x: statistics.median(a),
    "plain q02 of arch blocks": lambda a, r, x: quantile(a, 0.02),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--runtime", choices=timing.RUNTIMES, default="onnxruntime")
    parser.add_argument("--careful-factor", type=int, default=10)
    parser.add_argument("--stopping", action="store_true", help="compare stopping rules instead of estimators")
    parser.add_argument("--halves", action="store_true",
                        help="compare one measurement with the faster of two half-length ones taken apart")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, mixer_shape, mixers = draw_archs(ROOT / "spaces" / "mnist.yaml", 20, args.seed)
    _, mobile_shape, mobiles = draw_archs(ROOT / "spaces" / "mnist-mobilenet.yaml", 10, args.seed)
    archs = [(a, mixer_shape) for a in mixers] + [(a, mobile_shape) for a in mobiles]
    if args.stopping:
        stopping_rules(archs, args.runtime, args.seed)
        return
    if args.halves:
        halves_against_one(archs, args.runtime, args.seed, args.min_time)
        return
    first = [raw_blocks(a, shape, args.runtime, args.min_time) for a, shape in archs]
    second = [raw_blocks(a, shape, args.runtime, args.min_time) for a, shape in archs]
    careful = [raw_blocks(a, shape, args.runtime, args.min_time * args.careful_factor) for a, shape in archs]
    print(f"{len(archs)} archs, {args.runtime}, two measurements of {args.min_time} s each and a careful one "
          f"of {args.min_time * args.careful_factor:g} s, seed {args.seed}\n")
    print("| estimator | τ between the two | τ first vs careful | median spread |\n| --- | --- | --- | --- |")
    for name, estimate in ESTIMATORS.items():
        one, two, long = ([estimate(*m) for m in measurements] for measurements in (first, second, careful))
        spread = statistics.median(abs(x - y) / ((x + y) / 2) for x, y in zip(one, two))
        print(f"| {name} | {kendall_tau(one, two):.3f} | {kendall_tau(one, long):.3f} | {spread:.1%} |")


if __name__ == "__main__":
    main()
