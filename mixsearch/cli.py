"""The ``mixsearch`` command: parse arguments, call the library, print with rich.

Every user-facing failure is a ``MixsearchError``: it prints as one ``error:`` line with exit code
2 (bad input) or 1 (runtime problem), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import MixsearchError, UsageError

console = Console()
err_console = Console(stderr=True)


def _number(kind: type, minimum: float, inclusive: bool = True, noun: str | None = None):
    """An argparse type: ``kind`` values >= (or >) ``minimum``, with a one-line complaint."""
    wanted = noun or f"{'an integer' if kind is int else 'a number'} {'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


_positive_int = _number(int, 1)
_seconds = _number(float, 0, inclusive=False, noun="seconds > 0")
_seed = _number(int, 0)


class _Parser(argparse.ArgumentParser):
    """argparse with its complaint on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixsearch", description="Hardware-aware multi-objective "
                                     "architecture search of compact vision models (MLP-Mixer, MobileNet).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run or resume the study a spec declares")
    run.add_argument("spec", help="the spec YAML file, e.g. spaces/mnist.yaml")
    run.add_argument("--storage", help="Optuna storage URL (default: study.storage or sqlite:///studies/<name>.db)")
    run.add_argument("--trials", type=_positive_int, help="finished trials wanted in total (default: study.trials)")
    run.add_argument("--timeout", type=_seconds, help="stop starting new trials after this many seconds")
    run.add_argument("--seed", type=_seed, help="sampler and training seed (default: study.seed)")
    run.add_argument("--jobs", type=_positive_int, default=1,
                     help="worker processes on this machine (default 1); with the default storage, "
                          "several use the journal file studies/<name>.log")

    worker = commands.add_parser("worker", help="join a study as one more worker (e.g. on another machine)")
    worker.add_argument("spec", help="the same spec YAML file the other workers use")
    worker.add_argument("--storage", help="the shared storage URL, e.g. postgresql://user:pass@host/db")
    worker.add_argument("--trials", type=_positive_int, help="finished trials wanted in total (default: study.trials)")
    worker.add_argument("--timeout", type=_seconds, help="stop starting new trials after this many seconds")
    worker.add_argument("--seed", type=_seed, help="training seed (default: study.seed)")
    worker.add_argument("--index", type=_seed, help="worker number: sampler seed = seed + index "
                        "(default: a random sampler seed, so that workers explore differently)")
    worker.add_argument("--threads", type=_positive_int, help="torch CPU threads for this worker")

    validate = commands.add_parser("validate", help="check a spec and build the archs at its extremes")
    validate.add_argument("spec")

    show = commands.add_parser("show", help="the Pareto front and trial counts of a study")
    show.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    show.add_argument("--study", help="study name (needed when the storage holds several)")
    return parser


def _quiet_libraries() -> None:
    """Hide library chatter that says nothing to a user of this command."""
    import logging
    import warnings

    # torch logs a CUDA_HOME notice when a CUDA toolkit is installed without a GPU driver.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # Metric names and heartbeats are stable for our use; Optuna still labels them experimental.
    warnings.filterwarnings("ignore", message=".*experimental.*", module="optuna")
    warnings.filterwarnings("ignore", message=".*is experimental.*")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "worker": cmd_worker, "validate": cmd_validate, "show": cmd_show}[args.command]
    try:
        return handler(args) or 0
    except MixsearchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        return 130


# -- run -------------------------------------------------------------------------------------

class RichReporter:
    """Shows a bar over trials and the running trial's epoch and validation accuracy."""

    def __init__(self, progress: Progress, task, epochs_hint: int):
        self.progress = progress
        self.task = task
        self.epochs_hint = epochs_hint

    def data_loaded(self, splits):
        self.progress.console.print(f"data: {splits.source}; train {len(splits.train_y)}, "
                                    f"val {len(splits.val_y)}, test {len(splits.test_y)}", highlight=False)

    def study_opened(self, finished, target):
        self.progress.update(self.task, completed=min(finished, target), total=target)
        if finished:
            self.progress.console.print(f"resuming: {finished} trials already finished", highlight=False)

    def trial_started(self, number, arch):
        self.progress.update(self.task, status=f"trial {number}: {arch.describe()}")

    def epoch_done(self, number, result, epochs):
        self.progress.update(self.task, status=f"trial {number}: epoch {result.epoch}/{epochs} "
                                                f"val acc {result.val_accuracy:.4f}")

    def trial_finished(self, trial):
        from .study import FINISHED
        if trial.state in FINISHED:
            self.progress.advance(self.task)
        note = _trial_note(trial)
        values = ", ".join(f"{v:.4g}" for v in trial.values) if trial.values else "-"
        self.progress.console.print(f"trial {trial.number:>3} {trial.state.name.lower():<8} {values}  {note}",
                                    highlight=False)


def _trial_note(trial) -> str:
    attrs = trial.user_attrs
    for key, label in (("duplicate_of", "duplicate of trial"), ("infeasible_reason", "infeasible:"),
                       ("pruned_reason", "pruned:")):
        if key in attrs:
            return f"{label} {attrs[key]}"
    return attrs.get("arch_summary", "")


class _FirstInterrupt:
    """Ctrl-C once: the running trial fails as "interrupted" and the summary prints. Twice: quit now."""

    def __init__(self):
        self.previous = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _run_storage(args, spec, jobs: int) -> tuple[str, str | None]:
    from .storage import default_run_storage

    if args.storage or spec.study.storage:
        return args.storage or spec.study.storage, None
    return default_run_storage(spec.study.name, jobs)


def cmd_run(args) -> int:
    from .spec import load_spec
    from .study import finished_count, run_study
    from .storage import default_storage_url, mask_password

    spec = load_spec(args.spec)
    _require_buildable(spec)
    if args.jobs > 1:
        return _run_jobs(args, spec)
    target = args.trials or spec.study.trials
    epochs = max(spec.train["epochs"].extremes())
    columns = [TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("trials", total=target, status="loading data")
        reporter = RichReporter(progress, task, epochs)
        url, _ = _run_storage(args, spec, 1)
        progress.console.print(f"study {spec.study.name} in {mask_password(url)}", highlight=False)
        with _FirstInterrupt():
            summary = run_study(spec, storage_url=url, trials=args.trials, timeout=args.timeout,
                                seed=args.seed, reporter=reporter)
            progress.update(task, status="interrupted" if summary.interrupted else "done")
    console.print(f"{summary.added} trials added in {summary.seconds:.0f} s; "
                  f"{summary.finished} finished of {target} wanted.", highlight=False)
    _print_front(summary.study, mask_password(summary.storage_url))
    if summary.interrupted:
        err_console.print("interrupted: the running trial is marked failed; run the same command to resume",
                          highlight=False)
        return 130
    return 0


def cmd_worker(args) -> int:
    """One more worker on a shared study: trial lines, no progress bar, no Pareto table."""
    import secrets

    import torch

    from .spec import load_spec
    from .storage import mask_password
    from .study import run_study

    spec = load_spec(args.spec)
    _require_buildable(spec)
    if args.threads:
        torch.set_num_threads(args.threads)
    url, _ = _run_storage(args, spec, 2)
    seed = spec.study.seed if args.seed is None else args.seed
    sampler_seed = seed + args.index if args.index is not None else secrets.randbelow(2**31)
    name = f"worker {args.index}" if args.index is not None else "worker"
    with _FirstInterrupt():
        summary = run_study(spec, storage_url=url, trials=args.trials, timeout=args.timeout, seed=args.seed,
                            reporter=_LineReporter(name), sampler_seed=sampler_seed)
    print(f"{name}: {summary.added} trials added in {summary.seconds:.0f} s; {summary.finished} finished "
          f"in {mask_password(url)}", flush=True)
    return 130 if summary.interrupted else 0


class _LineReporter:
    """Plain lines, one per finished trial: several workers can share a terminal."""

    def __init__(self, name: str):
        self.name = name

    def data_loaded(self, splits): ...
    def study_opened(self, finished, target): ...
    def trial_started(self, number, arch): ...
    def epoch_done(self, number, result, epochs): ...

    def trial_finished(self, trial):
        values = ", ".join(f"{v:.4g}" for v in trial.values) if trial.values else "-"
        print(f"{self.name}: trial {trial.number:>3} {trial.state.name.lower():<8} {values}  {_trial_note(trial)}",
              flush=True)


def _run_jobs(args, spec) -> int:
    """``run --jobs N``: N ``mixsearch worker`` processes on one study, CPU threads split between them."""
    from .storage import load_study, mask_password, open_storage

    url, note = _run_storage(args, spec, args.jobs)
    shown = mask_password(url)
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    console.print(f"study {spec.study.name} in {shown}; {args.jobs} workers, {threads} torch threads each"
                  + (f" ({note})" if note else ""), highlight=False)
    command = [sys.executable, "-m", "mixsearch", "worker", args.spec, "--storage", url, "--threads", str(threads)]
    for flag, value in (("--trials", args.trials), ("--timeout", args.timeout), ("--seed", args.seed)):
        if value is not None:
            command += [flag, str(value)]
    # The first worker creates the study; the others join it once it exists.
    workers = [subprocess.Popen(command + ["--index", "0"])]
    storage = open_storage(url)
    while workers[0].poll() is None and spec.study.name not in _names(storage):
        time.sleep(0.2)
    if workers[0].poll() is None or spec.study.name in _names(storage):
        workers += [subprocess.Popen(command + ["--index", str(i)]) for i in range(1, args.jobs)]
    interrupted = False
    while True:
        try:
            codes = [w.wait() for w in workers]
            break
        except KeyboardInterrupt:  # the terminal sends Ctrl-C to the workers too; make sure they get it
            if interrupted:
                for w in workers:
                    w.kill()
                os._exit(130)
            interrupted = True
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGINT)
    failed = [c for c in codes if c not in (0, 130)]
    if spec.study.name in _names(storage):
        _print_front(load_study(storage, spec.study.name, shown), shown)
    if failed:
        raise MixsearchError(f"{len(failed)} of {args.jobs} workers failed (exit codes {failed}); see their output above")
    if interrupted or 130 in codes:
        err_console.print("interrupted: running trials are marked failed; run the same command to resume",
                          highlight=False)
        return 130
    return 0


def _names(storage) -> list[str]:
    from .storage import study_names
    return study_names(storage)


def _require_buildable(spec) -> None:
    """Refuse a space whose every corner is impossible before any storage is touched."""
    from .data import dataset_info
    from .space import corner_archs

    input_shape, num_classes = dataset_info(spec.data)
    corners = corner_archs(spec.space, input_shape, num_classes)
    if corners and all(c.arch is None for c in corners):
        raise UsageError(f"{spec.source}: space: no buildable arch; e.g. {corners[0].error}")


# -- validate --------------------------------------------------------------------------------

def cmd_validate(args) -> int:
    from .data import dataset_info
    from .measure import count_flops, count_params
    from .models import build_model
    from .space import corner_archs, count_space

    from .spec import load_spec

    spec = load_spec(args.spec)
    input_shape, num_classes = dataset_info(spec.data)
    corners = corner_archs(spec.space, input_shape, num_classes)
    table = Table(title=f"{spec.source}: archs at the extremes of each choice")
    for column in ("arch", "params", "FLOPs", "set by"):
        table.add_column(column, justify="right" if column in ("params", "FLOPs") else "left")
    buildable = 0
    for corner in corners:
        setting = corner.label
        if corner.arch is None:
            table.add_row(f"[red]impossible: {corner.error}[/]", "-", "-", setting)
            continue
        model = build_model(corner.arch)
        buildable += 1
        table.add_row(corner.arch.describe(), f"{count_params(model):,}", f"{count_flops(model, input_shape):,}", setting)
    console.print(table)
    size = count_space(spec.space, input_shape, num_classes)
    recipe_sizes = [c.size() for c in spec.train.values()]
    if size is not None and None not in recipe_sizes:
        for s in recipe_sizes:
            size *= s
    console.print(f"family {spec.space.family}; objectives {', '.join(spec.objectives)}; sampler {spec.study.sampler}; "
                  f"pruner {spec.study.pruner}", highlight=False)
    console.print("space size: " + (f"{size:,} configurations" if size is not None else "continuous (infinite)"),
                  highlight=False)
    if not buildable:
        raise UsageError(f"{spec.source}: space: no buildable arch; e.g. {corners[0].error}")
    console.print(f"[green]ok[/]: {spec.source} is valid ({buildable} corner archs built)")
    return 0


# -- show ------------------------------------------------------------------------------------

def cmd_show(args) -> int:
    from .storage import load_study, mask_password, open_storage

    url, name = resolve_target(args.target, args.study)
    shown = mask_password(url)
    study = load_study(open_storage(url, create=False), name, shown)
    _print_front(study, shown)
    return 0


def resolve_target(target: str, study_name: str | None) -> tuple[str, str | None]:
    """A spec file names its storage and study; anything else is a storage URL or file."""
    from .storage import default_storage_url, normalize_url

    if target.endswith((".yaml", ".yml")):
        from .spec import load_spec
        spec = load_spec(target)
        from .storage import default_run_storage
        return spec.study.storage or default_run_storage(spec.study.name)[0], study_name or spec.study.name
    if "://" not in target and not target.startswith("journal:") and not Path(target).exists():
        raise UsageError(f"{target}: no such file; give a spec YAML, a .db file or a storage URL")
    return normalize_url(target), study_name


def _print_front(study, shown_url: str) -> None:
    from .study import pareto_trials, state_counts

    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    front = pareto_trials(study)
    table = Table(title=f"Pareto front of {study.study_name} ({len(front)} trials)")
    table.add_column("trial", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("test acc", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("arch")
    for trial in front:
        cells = [_format_value(n, v) for n, v in zip(names, trial.values)]
        test = trial.user_attrs.get("test_accuracy")
        table.add_row(str(trial.number), *cells, f"{test:.4f}" if test is not None else "-",
                      str(trial.user_attrs.get("epochs_run", "-")), trial.user_attrs.get("arch_summary", ""))
    console.print(table)
    counts = state_counts(study)
    console.print("trials: " + (", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"),
                  highlight=False)
    console.print(f"browse it: optuna-dashboard {shown_url}", highlight=False)


def _format_value(name: str, value: float) -> str:
    if name == "accuracy":
        return f"{value:.4f}"
    if name == "latency":
        return f"{value:.3f} ms"
    return f"{int(value):,}"


if __name__ == "__main__":
    sys.exit(main())
