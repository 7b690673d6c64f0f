"""Does pruning pay? The same spec and seeds with each pruner, side by side in one run.

    .venv/bin/python bench/pruning.py [--seeds 0 1 2] [--trials 100] [--epochs 10]

For each pruner it prints epochs trained in total, wall time, trials complete/pruned and the
hypervolume of the final front, each as a ratio to ``none`` (summed over seeds for counts and time,
averaged over seeds for the hypervolume ratio). A last row replays the ``none`` runs to give the
fewest epochs any pruner can train that never stops a trial the finished trials do not dominate
yet (see ``bound_for_front_keeping``). About 10 minutes a seed on two CPU cores.

Hypervolume: objectives (validation error = 1 - accuracy, params / PARAMS_SCALE), both minimized;
reference point (1, 1). PARAMS_SCALE is the largest corner arch of the space; a point outside
the unit box adds no volume. Data: the bundled MNIST subset, so the bench runs offline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import yaml
from mixsearch.optuna_compat import compute_hypervolume
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixsearch.errors import MixsearchError  # noqa: E402
from mixsearch.pruning import dominates  # noqa: E402
from mixsearch.spec import parse_spec  # noqa: E402
from mixsearch.study import run_study  # noqa: E402

PRUNERS = ["none", "median", "moasha", "pareto", "pareto:gain_quantile=1.0"]


def pruner_setting(text: str):
    """``pareto`` or ``pareto:gain_quantile=0.5,margin=0`` → the spec's ``study.pruner`` value."""
    name, _, settings = text.partition(":")
    if not settings:
        return name
    pairs = [item.partition("=") for item in settings.split(",")]
    if any(not key or not sep for key, sep, _ in pairs):
        raise ValueError(f"--pruners {text}: settings are key=value pairs separated by commas")
    return {"type": name, **{key: yaml.safe_load(value) for key, _, value in pairs}}  # 0.5 -> float, 2 -> int


def bench_spec(pruner: str, seed: int, trials: int, epochs: int):
    return parse_spec({
        "study": {"name": "bench", "trials": trials, "seed": seed, "sampler": "random",
                  "pruner": pruner_setting(pruner)},
        "data": {"source": "bundled", "train_size": 2000, "val_size": 1000, "test_size": 500},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.005},
        "objectives": ["accuracy", "params"],
        "measure": {"latency_min_time": 0.01},
        "space": {"family": "mixer", "layers": [1, 2, 3], "channels": [8, 16, 32], "token_hidden": [16, 32],
                  "channel_hidden": [16, 64], "patch_size": [4, 7], "dilation": [1, 2],
                  "sharing": {"mode": ["none", "all"]}},
    }, "bench/pruning.py")


def largest_params(spec) -> int:
    from mixsearch.data import dataset_info
    from mixsearch.measure import count_params
    from mixsearch.models import build_model
    from mixsearch.space import corner_archs

    shape, classes = dataset_info(spec.data)
    return max(count_params(build_model(c.arch)) for c in corner_archs(spec.space, shape, classes) if c.arch)


def bound_for_front_keeping(study: optuna.Study, warmup_epochs: int) -> int:
    """Epochs of the best pruner that never prunes a trial the trials finished before it do not dominate.

    Replayed on a ``none`` run: knowing every final accuracy, such a pruner stops each trial that
    ends dominated by an earlier finished trial after ``warmup_epochs`` (at least 1) and trains the
    rest to the end. ``pareto`` keeps that guarantee, so no setting of it can train fewer epochs
    on a sequential run; the bound shows what the space and the trial order leave to save.
    """
    finished: list[tuple[float, ...]] = []
    epochs = 0
    for trial in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        if "duplicate_of" in trial.user_attrs:
            continue  # reused without training, under every pruner
        point = (-trial.values[0], *trial.values[1:])
        if any(dominates(other, point) for other in finished):
            epochs += max(warmup_epochs, 1)
        else:
            epochs += trial.user_attrs["epochs_run"]
            finished.append(point)
    return epochs


def measure(pruner: str, seed: int, trials: int, epochs: int, workdir: Path, scale: int) -> dict:
    spec = bench_spec(pruner, seed, trials, epochs)
    file_name = pruner.replace(":", "_").replace(",", "_") + f"-{seed}.db"
    url = f"sqlite:///{workdir / file_name}"
    started = time.perf_counter()
    summary = run_study(spec, storage_url=url)
    seconds = time.perf_counter() - started
    all_trials = summary.study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    # A point outside the reference box adds no volume; clipping it to the box says the same.
    points = np.minimum(np.array([[1 - t.values[0], t.values[1] / scale] for t in complete]), 1.0)
    result = {
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in all_trials),
        "seconds": seconds,
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in all_trials),
        "hypervolume": compute_hypervolume(points, np.array([1.0, 1.0])) if len(points) else 0.0,
    }
    if pruner == "none":
        result["bound_epochs"] = bound_for_front_keeping(summary.study, warmup_epochs=1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pruners", nargs="+", default=PRUNERS,
                        help="none first; NAME or NAME:key=value,... (e.g. pareto:gain_quantile=0.5)")
    args = parser.parse_args()
    if args.pruners[0] != "none":
        parser.error("--pruners: the first must be none, the baseline of the ratios")
    try:  # a typo in a pruner setting fails here, not after an hour of benchmarking
        for pruner in args.pruners:
            bench_spec(pruner, 0, args.trials, args.epochs)
    except (ValueError, MixsearchError) as exc:
        parser.error(str(exc))
    scale = largest_params(bench_spec("none", 0, args.trials, args.epochs))
    pruners = args.pruners
    results: dict[str, list[dict]] = {p: [] for p in pruners}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for pruner in pruners:
                results[pruner].append(measure(pruner, seed, args.trials, args.epochs, Path(tmp), scale))
                r = results[pruner][-1]
                print(f"seed {seed} {pruner:<7} epochs {r['epochs']:>4} time {r['seconds']:7.1f}s "
                      f"complete {r['complete']:>3} pruned {r['pruned']:>3} HV {r['hypervolume']:.4f}", flush=True)
    base = results[pruners[0]]
    print(f"\nratios to {pruners[0]} over seeds {args.seeds} ({args.trials} trials, {args.epochs} epochs, "
          f"params scale {scale:,}):")
    print("| pruner | epochs | wall time | complete / pruned | hypervolume (mean ratio, min ratio) |")
    print("| --- | --- | --- | --- | --- |")
    for pruner in pruners:
        runs = results[pruner]
        epochs = sum(r["epochs"] for r in runs) / sum(r["epochs"] for r in base)
        seconds = sum(r["seconds"] for r in runs) / sum(r["seconds"] for r in base)
        hv = [r["hypervolume"] / b["hypervolume"] for r, b in zip(runs, base)]
        print(f"| {pruner} | {epochs:.2f} | {seconds:.2f} | {sum(r['complete'] for r in runs)} / "
              f"{sum(r['pruned'] for r in runs)} | {np.mean(hv):.3f}, {min(hv):.3f} |")
    if "bound_epochs" in base[0]:
        bound = sum(r["bound_epochs"] for r in base) / sum(r["epochs"] for r in base)
        print(f"| bound for any front-keeping pruner (replayed on none) | {bound:.2f} | | | 1.000, 1.000 |")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    main()
