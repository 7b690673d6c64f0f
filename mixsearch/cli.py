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
    for command in (run, worker):
        command.add_argument("--artifacts", metavar="DIR", help="artifact store directory for trained trials' files "
                             "(default: artifacts/<name>/ beside a SQLite or journal file, else studies/artifacts)")

    validate = commands.add_parser("validate", help="check a spec and build the archs at its extremes")
    validate.add_argument("spec")

    show = commands.add_parser("show", help="the Pareto front and trial counts of a study")
    show.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    show.add_argument("--study", help="study name (needed when the storage holds several)")
    _add_takeaway_commands(commands)
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
    handler = {"run": cmd_run, "worker": cmd_worker, "validate": cmd_validate, "show": cmd_show,
               "dashboard": cmd_dashboard, "export": cmd_export, "train": cmd_train,
               "evaluate": cmd_evaluate}[args.command]
    try:
        return handler(args) or 0
    except MixsearchError as exc:
        from rich.markup import escape  # messages quote values like [1, 28]: not markup

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
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
    from .storage import JOURNAL_SUFFIXES, default_run_storage, normalize_url

    if args.storage or spec.study.storage:
        given = args.storage or spec.study.storage
        # A file path is fine when its suffix says what it is; anything else must be a URL.
        if Path(given).suffix in (".db", ".sqlite", ".sqlite3", *JOURNAL_SUFFIXES):
            given = normalize_url(given)
        return given, None
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
                                seed=args.seed, reporter=reporter, artifacts=args.artifacts)
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
                            reporter=_LineReporter(name), sampler_seed=sampler_seed, artifacts=args.artifacts)
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
    for flag, value in (("--trials", args.trials), ("--timeout", args.timeout), ("--seed", args.seed),
                        ("--artifacts", args.artifacts)):
        if value is not None:
            command += [flag, str(value)]
    # The first worker creates the study; the others join it once it exists.
    # Own process groups: a terminal's Ctrl-C reaches only this process, which passes on exactly
    # one SIGINT (a second one would make a worker quit without failing its trial).
    storage = open_storage(url)
    workers = [subprocess.Popen(command + ["--index", "0"], process_group=0)]
    interrupted = False
    try:
        while workers[0].poll() is None and spec.study.name not in _names(storage):
            time.sleep(0.2)
        if workers[0].poll() is None or spec.study.name in _names(storage):
            workers += [subprocess.Popen(command + ["--index", str(i)], process_group=0) for i in range(1, args.jobs)]
    except KeyboardInterrupt:
        interrupted = True
        for w in workers:
            w.send_signal(signal.SIGINT)
    while True:
        try:
            codes = [w.wait() for w in workers]
            break
        except KeyboardInterrupt:
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
    corners = corner_archs(spec.space, input_shape, num_classes, batch_size=spec.measure.latency_batch_size,
                           until_buildable=True)
    if corners and all(c.arch is None for c in corners):
        raise UsageError(f"{spec.source}: space: no buildable arch; e.g. {corners[0].error}")


# -- validate --------------------------------------------------------------------------------

def cmd_validate(args) -> int:
    from .data import dataset_info
    from .space import corner_archs, count_space

    from .spec import load_spec

    spec = load_spec(args.spec)
    input_shape, num_classes = dataset_info(spec.data)
    corners = corner_archs(spec.space, input_shape, num_classes, batch_size=spec.measure.latency_batch_size)
    table = Table(title=f"{spec.source}: archs at the extremes of each choice")
    for column in ("arch", "params", "FLOPs", "memory", "set by"):
        table.add_column(column, justify="right" if column in ("params", "FLOPs", "memory") else "left")
    buildable = 0
    for corner in corners:
        setting = corner.label
        if corner.arch is None:
            table.add_row(f"[red]impossible: {corner.error}[/]", "-", "-", "-", setting)
            continue
        buildable += 1  # counted on a meta model by corner_archs: nothing was allocated
        sizes = corner.sizes
        table.add_row(corner.arch.describe(), f"{sizes.params:,}", f"{sizes.flops:,}",
                      _format_value("memory", sizes.memory.peak_bytes), setting)
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
    target = shown_url[len("sqlite:///"):] if shown_url.startswith("sqlite:///") else shown_url
    console.print(f"browse it: mixsearch dashboard {target} --study {study.study_name}", highlight=False)
    console.print(f"take archs away: mixsearch export {target} --study {study.study_name}", highlight=False)


def _format_value(name: str, value: float) -> str:
    if name == "accuracy":
        return f"{value:.4f}"
    if name == "latency":
        return f"{value:.3f} ms"
    if name == "memory":
        return f"{value / 2**10:,.1f} KiB"
    return f"{int(value):,}"


# -- dashboard, export, train, evaluate: taking archs away from a study ---------------------------

def _add_takeaway_commands(commands) -> None:
    dashboard = commands.add_parser("dashboard", help="browse a study in optuna-dashboard, with its artifacts")
    dashboard.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    dashboard.add_argument("--study", help="study name (opens its page; default: the only study of the storage)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=_number(int, 1), default=8080, help="port (default 8080)")
    dashboard.add_argument("--artifacts", metavar="DIR", help="artifact store directory (default: the study's)")

    export = commands.add_parser("export", help="write chosen trials as YAML files with their trained weights")
    export.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    export.add_argument("--study", help="study name (needed when the storage holds several)")
    pick = export.add_mutually_exclusive_group()
    pick.add_argument("--pareto", action="store_true", help="the Pareto-optimal trials (the default)")
    pick.add_argument("--trial", type=_seed, nargs="+", metavar="N", help="these trial numbers")
    pick.add_argument("--top", type=_positive_int, metavar="K", help="the best K trials by --by")
    export.add_argument("--by", metavar="METRIC", help="metric for --top: an objective or test_accuracy "
                        "(default: the first objective)")
    export.add_argument("-o", "--output", metavar="DIR", help="output directory (default: exports/<study>)")
    export.add_argument("--onnx", action="store_true", help="also write the inference form as ONNX")
    export.add_argument("--artifacts", metavar="DIR", help="artifact store directory (default: the study's)")

    train = commands.add_parser("train", help="retrain an exported arch from scratch with its recorded recipe")
    train.add_argument("exported", help="an exported YAML file (see mixsearch export)")
    train.add_argument("--epochs", type=_positive_int, help="epochs (default: the recorded recipe's)")
    train.add_argument("--data-source", metavar="SRC", help="data source, e.g. bundled, torchvision, idx:PATH")
    train.add_argument("--train-size", type=_positive_int, help="training images (default: the recorded size)")
    train.add_argument("--seed", type=_seed, help="seed (default: the trial's, which repeats it exactly on CPU)")
    train.add_argument("-o", "--output", metavar="DIR", default="retrained",
                       help="where the retrained YAML and weights go (default: retrained)")

    evaluate = commands.add_parser("evaluate", help="accuracy of an exported file's weights on its test split")
    evaluate.add_argument("exported", help="an exported YAML file with weights")
    evaluate.add_argument("--data-source", metavar="SRC", help="data source (default: the recorded one)")


def cmd_dashboard(args) -> int:
    from .dashboard import plan, serve
    from .storage import mask_password

    url, name = resolve_target(args.target, args.study)
    dashboard = plan(url, name, args.host, args.port, args.artifacts)

    def announce(address: str) -> None:
        store = dashboard.artifact_dir if dashboard.artifact_dir.is_dir() else "none (no trained trial yet)"
        # Plain lines, never wrapped: scripts and terminals pick the address out of them.
        print(f"optuna-dashboard on {mask_password(url)}; artifacts: {store}", flush=True)
        print(f"open {address}  (Ctrl-C stops it)", flush=True)

    serve(dashboard, args.host, args.port, announce)
    return 0


def _open_study_for_export(args):
    from .artifacts import artifact_dir, open_artifact_store
    from .storage import load_study, mask_password, open_storage

    url, name = resolve_target(args.target, args.study)
    shown = mask_password(url)
    study = load_study(open_storage(url, create=False), name, shown)
    return study, shown, open_artifact_store(artifact_dir(url, study, args.artifacts), create=False)


def cmd_export(args) -> int:
    from .export import export_trials, select_trials

    if args.by and args.top is None:
        raise UsageError("--by: only with --top K")
    study, shown, store = _open_study_for_export(args)
    trials = select_trials(study, numbers=args.trial, top=args.top, by=args.by)
    if not trials:
        raise UsageError(f"study {study.study_name}: no complete trained trial to export yet")
    out = Path(args.output or Path("exports") / study.study_name)
    result = export_trials(study, trials, out, store, shown, onnx=args.onnx)
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False)
    table = Table(title=f"exported {len(result.files)} trials of {study.study_name} to {out}")
    for column in ("trial", *study.metric_names, "test acc", "file"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for trial, path in zip(trials, result.files):
        test = trial.user_attrs.get("test_accuracy")
        table.add_row(str(trial.number), *[_format_value(n, v) for n, v in zip(study.metric_names, trial.values)],
                      f"{test:.4f}" if test is not None else "-", path.name)
    console.print(table)
    console.print(f"index: {out / 'index.md'}; load one with mixsearch.load_model(\"{result.files[0]}\")",
                  highlight=False)
    return 0


def cmd_train(args) -> int:
    from .export import retrain

    def on_epoch(result) -> bool:
        console.print(f"epoch {result.epoch}: train loss {result.train_loss:.4f}, val acc {result.val_accuracy:.4f}",
                      highlight=False)
        return False

    done = retrain(args.exported, out_dir=args.output, epochs=args.epochs, data_source=args.data_source,
                   train_size=args.train_size, seed=args.seed, on_epoch=on_epoch)
    record, metrics = done.record, done.record["metrics"]
    console.print(f"{record.get('summary') or ''}".strip() or record["arch"]["family"], highlight=False)
    console.print(f"test accuracy {record['test_accuracy']:.4f}, val accuracy {metrics['val_accuracy']:.4f}, "
                  f"params {metrics['params']:,}, FLOPs {metrics['flops']:,}, "
                  f"latency {metrics['latency_ms']:.3f} ms (seed {record['seed']})", highlight=False)
    console.print(f"wrote {done.path} and {done.path.parent / record['weights']}", highlight=False)
    return 0


def cmd_evaluate(args) -> int:
    from .export import evaluate_export

    result = evaluate_export(args.exported, data_source=args.data_source)
    recorded = result["recorded_test_accuracy"]
    line = f"test accuracy {result['test_accuracy']:.4f} on {result['test_size']} images of {result['source']}"
    if recorded is not None:
        line += f" (recorded {recorded:.4f})"
    console.print(line, highlight=False)
    console.print(f"val accuracy {result['val_accuracy']:.4f}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
