"""How fast is a search? Workers, time around training, memory, and time to a front against plain Optuna.

    .venv/bin/python bench/search_speed.py [--trials 12] [--epochs 3] [--default-trials 6] [--seeds 0 1 2]
        [--parts jobs default e2e]

Three parts, each printing its inputs and ratios:

- ``jobs``: the same small spec (below) run by ``mixsearch run --jobs 1`` and ``--jobs 2`` (own
  storages, same seed); finished trials per hour of each and their ratio. ``--jobs 1`` runs with
  one torch thread (``OMP_NUM_THREADS=1``), as each of the two workers does while both train, so
  the ratio measures the parallelism and not the thread count; a worker left training alone at
  the end takes up the other's thread. Each run's time is split into start-up (to the first
  trial's start), trials and the time after the last trial. Beside them, the ceiling: a fixed
  piece of training work run by one process alone, then by two at once. ``--jobs-spec
  spaces/mnist.yaml --trials 30`` runs this part on the default study instead (about 13 minutes
  a seed).
- ``default``: ``mixsearch run spaces/mnist.yaml --trials N`` in a subprocess (one torch thread): the peak RSS of
  that one worker, and time outside training as a share of the trials' time (from the stored
  trials: 1 − Σ train_seconds / Σ (datetime_complete − datetime_start) over trained trials; what
  lies outside is sampling, storage writes, measuring, the pruner's work between epochs, test
  evaluation and artifacts).
- ``e2e``: plain Optuna (its default sampler for two objectives, no pruning, the reference loop of
  bench/trainer.py as objective, the same space, images and recipe) for ``--trials`` trials; then
  mixsearch (its defaults: TPE, the ``pareto`` pruner; latency is not timed, since the spec
  searches accuracy against params) on the same space for at most the baseline's
  wall time (and at most 4× its trials). Printed: the
  baseline's wall time and final hypervolume, and the time mixsearch took to reach that
  hypervolume, as a ratio.

``--seeds`` runs the jobs and e2e parts once per seed (the spec's seed, and the baseline's sampler
and model initialization): a seed is one draw of archs, and a handful of trials weighs the
samplers' luck as much as the speed, so with several seeds each part ends with the mean ± std of
its ratio.

Hypervolume: (1 − validation accuracy, params / the largest arch's params), reference point (1, 1).
Small spec: bundled MNIST, 2,000 train / 1,000 validation images, batch 64, Adam lr 1e-3 constant,
a Mixer space without weight sharing (what a plain model can express). Minutes, not hours, with the
defaults on two CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from optuna._hypervolume import compute_hypervolume
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trainer import PlainMixer, reference_datasets, reference_train, torchvision_root  # noqa: E402

from mixsearch.data import bundled_mnist_dir, split_indices  # noqa: E402
from mixsearch.models import count_params  # noqa: E402
from mixsearch.spec import parse_spec  # noqa: E402
from mixsearch.study import run_study  # noqa: E402

SPACE = {"layers": [2, 3, 4], "channels": [16, 32], "token_hidden": [32, 64], "channel_hidden": [32, 64],
         "patch_size": [4, 7], "dilation": [1, 2]}
TRAIN_SIZE, VAL_SIZE = 2000, 1000


def small_spec(trials: int, epochs: int, seed: int) -> dict:
    return {
        "study": {"name": "speed", "trials": trials, "seed": seed},
        "data": {"source": "bundled", "train_size": TRAIN_SIZE, "val_size": VAL_SIZE, "test_size": 500},
        "train": {"epochs": epochs, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "schedule": "constant",
                  "weight_decay": 0.0},
        "objectives": ["accuracy", "params"],
        "space": {"family": "mixer", **SPACE},
    }


def mixsearch_command(spec_file: Path, storage: str, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mixsearch", "run", str(spec_file), "--storage", storage,
            "--artifacts", str(workdir / "artifacts"), *extra]


def run_measured(command: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes of the process itself) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def finished_trials(storage: str, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=optuna_storage(storage))
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def optuna_storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return url


# --------------------------------------------------------------------------- parts


# A fixed piece of the trainer's work (bench/trainer.py's Mixer at dilation 1, 300 training
# steps on random images, one thread), run by one process alone and then by two at once: how
# fast two processes can go on this machine's two cores, whatever mixsearch does around them.
STEADY_WORK = """
import time, torch
from trainer import mixer_arch
from mixsearch.models import build_model
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model(mixer_arch(dilation=1))
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
started = time.perf_counter()
for _ in range(300):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
print(time.perf_counter() - started)
"""


def two_at_once_ceiling(rounds: int = 3) -> float:
    """Work done per second by two concurrent processes, over one process alone (2.0 = perfect).

    Rounds alternate alone and together; the medians of each cancel the machine's speed spells.
    """
    def start():
        return subprocess.Popen([sys.executable, "-c", STEADY_WORK], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")]),
                                     "OMP_NUM_THREADS": "1"})
    alone, together = [], []
    for _ in range(rounds):
        alone.append(float(start().communicate()[0]))
        pair = [start(), start()]
        together.append(max(float(p.communicate()[0]) for p in pair))
    return 2 * statistics.median(alone) / statistics.median(together)


def run_phases(storage: str, name: str, started: float, ended: float) -> tuple[float, float, float]:
    """(start-up, trials, after) in seconds of a run: from the process start to its first trial's
    start, from there to the last trial's end, and from there to the process end."""
    study = optuna.load_study(study_name=name, storage=optuna_storage(storage))
    first = min(t.datetime_start for t in study.trials).timestamp()
    last = max(t.datetime_complete for t in study.trials if t.datetime_complete).timestamp()
    return first - started, last - first, ended - last


def part_jobs(workdir: Path, trials: int, epochs: int, seed: int, pruner: str | None = None,
              spec_path: Path | None = None) -> float:
    """Finished trials per hour of ``--jobs 2`` over those of ``--jobs 1``, on the small spec or,
    given ``spec_path``, on that spec (its own epochs; ``trials`` of it, with this seed)."""
    spec_file = workdir / "jobs.yaml"
    if spec_path is None:
        spec = small_spec(trials, epochs, seed)
    else:
        spec = yaml.safe_load(spec_path.read_text())
        spec["study"].update(trials=trials, seed=seed)
    if pruner is not None:  # workers prune with less of the study known than one process does
        spec["study"]["pruner"] = pruner
    spec_file.write_text(yaml.safe_dump(spec))
    name = spec["study"]["name"]
    rates, spans = {}, {}
    for jobs in (1, 2):
        storage = f"journal:{workdir / f'jobs{jobs}-{seed}.log'}"
        env = {"OMP_NUM_THREADS": "1"} if jobs == 1 else None
        started = time.time()
        seconds, _ = run_measured(mixsearch_command(spec_file, storage, workdir, "--jobs", str(jobs)), env)
        startup, spans[jobs], after = run_phases(storage, name, started, started + seconds)
        finished = finished_trials(storage, name)
        pruned = sum(t.state == TrialState.PRUNED for t in finished)
        training = sum(t.user_attrs.get("train_seconds", 0.0) for t in finished)
        rates[jobs] = len(finished) / seconds * 3600
        print(f"--jobs {jobs}: {len(finished)} finished trials ({pruned} pruned, {training:.1f} s of training in "
              f"all) in {seconds:.1f} s = {rates[jobs]:.0f} trials/hour (start-up {startup:.1f} s, trials "
              f"{spans[jobs]:.1f} s, after the last trial {after:.1f} s)", flush=True)
    ceiling = two_at_once_ceiling()
    what = (f"{spec_path}, {trials} trials" if spec_path else
            f"{trials} trials of {epochs} epochs on {TRAIN_SIZE:,} images, space {SPACE}")
    print(f"jobs: {what}, pruner {spec['study'].get('pruner', 'pareto')}, seed {seed}: "
          f"--jobs 2 / --jobs 1 = {rates[2] / rates[1]:.2f}× trials per hour; "
          f"{spans[1] / spans[2]:.2f}× from first trial to last; two processes of fixed training work at once "
          f"do {ceiling:.2f}× the work of one alone on this machine (the most --jobs 2 could give)")
    return rates[2] / rates[1]


def part_default(workdir: Path, trials: int, keep: Path | None = None) -> None:
    storage = f"sqlite:///{workdir / 'default.db'}"
    seconds, peak = run_measured(mixsearch_command(ROOT / "spaces" / "mnist.yaml", storage, workdir,
                                                   "--trials", str(trials)), {"OMP_NUM_THREADS": "1"})
    trained = [t for t in finished_trials(storage, "mnist-mixer") if t.user_attrs.get("train_seconds")]
    every = finished_trials(storage, "mnist-mixer")
    wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trained)
    span = (max(t.datetime_complete for t in every) - min(t.datetime_start for t in every)).total_seconds()
    training = sum(t.user_attrs["train_seconds"] for t in trained)
    every_training = sum(t.user_attrs.get("train_seconds") or 0.0 for t in every)
    print(f"default study (spaces/mnist.yaml, {trials} trials, {seconds:.0f} s): {len(trained)} trained trials, "
          f"{wall:.1f} s in them, {training:.1f} s training: outside training {1 - training / wall:.1%} "
          f"of trial time; from the first trial's start to the last one's end ({len(every)} trials, "
          f"{span:.1f} s, so plots and the loop between trials count too) {1 - every_training / span:.1%}; "
          f"peak RSS of the worker {peak / 2**30:.2f} GiB", flush=True)
    if keep is not None:  # e.g. for `mixsearch show sqlite:///KEEP`
        shutil.copyfile(workdir / "default.db", keep)


def plain_objective(train_set, val_set, epochs: int):
    """What a user writes for plain Optuna: suggest the arch, train it the tutorial way, return the values."""
    def objective(trial: optuna.Trial) -> tuple[float, int]:
        model = PlainMixer(**{name: trial.suggest_categorical(name, values) for name, values in SPACE.items()})
        return reference_train(model, train_set, val_set, epochs), count_params(model)

    return objective


def hypervolume(points: list[tuple[float, float]], scale: float) -> float:
    if not points:
        return 0.0
    box = np.minimum(np.array([[1 - accuracy, params / scale] for accuracy, params in points]), 1.0)
    return float(compute_hypervolume(box, np.array([1.0, 1.0])))


def part_e2e(workdir: Path, trials: int, epochs: int, seed: int) -> float | None:
    """Time mixsearch took to the baseline's final hypervolume over the baseline's wall time; None
    when it did not reach it."""
    root = torchvision_root(Path(str(bundled_mnist_dir())), workdir / f"mnist{seed}")
    full_train, _ = reference_datasets(root, 12_000, 1)
    train, val = split_indices(len(full_train), TRAIN_SIZE, VAL_SIZE, seed)  # mixsearch's split of the same pool
    train_set = torch.utils.data.Subset(full_train.dataset, train.tolist())
    val_set = torch.utils.data.Subset(full_train.dataset, val.tolist())
    largest = {name: max(values) for name, values in SPACE.items() if name not in ("patch_size", "dilation")}
    scale = max(count_params(PlainMixer(**largest, patch_size=p, dilation=d))
                for p, d in itertools.product(SPACE["patch_size"], SPACE["dilation"]))

    torch.manual_seed(seed)
    # Optuna's default sampler (TPESampler()), seeded so that a seed names one comparison.
    baseline = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=seed))
    started = time.perf_counter()
    baseline.optimize(plain_objective(train_set, val_set, epochs), n_trials=trials)
    baseline_seconds = time.perf_counter() - started
    target = hypervolume([tuple(t.values) for t in baseline.trials if t.values], scale)
    print(f"\nplain Optuna ({type(baseline.sampler).__name__}, reference loop): {trials} trials in "
          f"{baseline_seconds:.1f} s, hypervolume {target:.4f}", flush=True)

    spec = parse_spec(small_spec(trials, epochs, seed), "bench/search_speed.py")
    began = datetime.datetime.now()
    # The same budget in time: up to the baseline's wall time, as many trials as fit (capped at 4×).
    summary = run_study(spec, storage_url=f"sqlite:///{workdir / f'e2e{seed}.db'}", trials=4 * trials,
                        timeout=baseline_seconds, artifacts=str(workdir / "artifacts"))
    reached, points = None, []
    for t in sorted(summary.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.datetime_complete):
        points.append(tuple(t.values))
        if reached is None and hypervolume(points, scale) >= target:
            reached = (t.datetime_complete - began).total_seconds()
    final = hypervolume(points, scale)
    print(f"mixsearch (TPE, pareto pruner): {summary.finished} trials in {summary.seconds:.1f} s, "
          f"hypervolume {final:.4f}")
    inputs = f"space {SPACE}, {epochs} epochs on {TRAIN_SIZE:,} images, {trials} trials, seed {seed}"
    if reached is None:
        print(f"e2e: mixsearch did not reach the baseline's hypervolume within its wall time ({inputs})")
        return None
    print(f"e2e: mixsearch reached the baseline's final hypervolume after {reached:.1f} s = "
          f"{reached / baseline_seconds:.2f} of the baseline's wall time ({inputs})")
    return reached / baseline_seconds


def print_over_seeds(what: str, seeds: list[int], values: list[float | None]) -> None:
    """One figure of several seeds: each, and their mean ± sample std (None: the figure was not
    reached, and no mean is given)."""
    shown = ", ".join("not reached" if v is None else f"{v:.2f}" for v in values)
    line = f"{what} over seeds {seeds}: {shown}"
    if len(values) > 1 and None not in values:
        line += f"; mean {statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (sample std)"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12,
                        help="trials of the small spec (jobs and e2e), or of --jobs-spec")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the small spec")
    parser.add_argument("--default-trials", type=int, default=6, help="trials of spaces/mnist.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds of the jobs and e2e parts: each is one run; with several, their mean ± std")
    parser.add_argument("--pruner", help="pruner of the jobs part's spec (default: the spec default, pareto)")
    parser.add_argument("--jobs-spec", type=Path,
                        help="run the jobs part on this spec (e.g. spaces/mnist.yaml, with --trials 30) instead of the small one")
    parser.add_argument("--keep-default", type=Path, help="copy the default study's SQLite file here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process (e2e)")
    parser.add_argument("--parts", nargs="+", choices=["jobs", "default", "e2e"], default=["jobs", "default", "e2e"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "default" in args.parts:
            part_default(workdir, args.default_trials, args.keep_default)
        if "jobs" in args.parts:
            ratios = [part_jobs(workdir, args.trials, args.epochs, seed, args.pruner, args.jobs_spec)
                      for seed in args.seeds]
            print_over_seeds("--jobs 2 / --jobs 1, trials per hour", args.seeds, ratios)
        if "e2e" in args.parts:
            ratios = [part_e2e(workdir, args.trials, args.epochs, seed) for seed in args.seeds]
            print_over_seeds("e2e, share of the baseline's wall time", args.seeds, ratios)


if __name__ == "__main__":
    main()
