"""``run`` and ``worker``: the search commands, their progress display and terminal signal wiring."""

from __future__ import annotations

import os
import signal
import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import MixsearchError
from .render import console, print_front, print_note, trial_line


class RichReporter:
    """Shows a bar over trials and the running trial's epoch and validation accuracy."""

    def __init__(self, progress: Progress, task, objectives: list[str]):
        self.progress = progress
        self.task = task
        self.objectives = objectives

    def data_loaded(self, splits):
        self.progress.console.print(f"data: {splits.source}; train {len(splits.train_y)}, "
                                    f"val {len(splits.val_y)}, test {len(splits.test_y)}", highlight=False)

    def study_opened(self, finished, target):
        self.progress.update(self.task, completed=min(finished, target), total=target)
        if finished:
            self.progress.console.print(f"resuming: {finished} trials already finished", highlight=False)

    def warning(self, text):
        from rich.markup import escape

        self.progress.console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False)

    def trial_started(self, number, arch):
        self.progress.update(self.task, status=f"trial {number}: {arch.describe()}")

    def epoch_done(self, number, result, epochs):
        self.progress.update(self.task, status=f"trial {number}: epoch {result.epoch}/{epochs} "
                                                f"val acc {result.val_accuracy:.4f}")

    def trial_finished(self, trial):
        from ..trial import FINISHED

        if trial.state in FINISHED:
            self.progress.advance(self.task)
        self.progress.console.print(trial_line(trial, self.objectives), highlight=False)


class LineReporter:
    """Plain lines, one per finished trial: several workers can share a terminal."""

    def __init__(self, name: str, objectives: list[str]):
        self.name = name
        self.objectives = objectives
        self.ran = 0  # trials this process ran to their end (the study's count includes other workers')

    def data_loaded(self, splits): ...
    def study_opened(self, finished, target): ...
    def trial_started(self, number, arch): ...
    def epoch_done(self, number, result, epochs): ...

    def warning(self, text):
        print_whole_line(f"{self.name}: warning: {text}", sys.stderr)

    def trial_finished(self, trial):
        self.ran += 1
        print_whole_line(f"{self.name}: {trial_line(trial, self.objectives)}")


def print_whole_line(text: str, stream=None) -> None:
    """Print ``text`` and its newline in one write (to stdout unless ``stream``): workers share one
    output, and ``print`` writes the newline separately, so with unbuffered output two workers'
    lines could interleave."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


class FirstInterrupt:
    """Ctrl-C once: the running trial fails as "interrupted" and the summary prints. Twice: quit now."""

    def __init__(self):
        self.previous = None
        self.interrupted = False

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.interrupted = True
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        # After a first Ctrl-C, a second one quits at once for the rest of the process too
        # (printing the summary, shutting down), never with a traceback.
        if self.previous is not None and not self.interrupted:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _load_checked(path: str):
    from ..spec import load_spec
    from ..validate import require_buildable

    spec = load_spec(path)
    require_buildable(spec)
    return spec


def cmd_run(args) -> int:
    if args.jobs > 1:
        return _run_jobs(args)
    from ..storage import mask_password, run_storage
    from ..study import run_study

    spec = _load_checked(args.spec)
    target = args.trials or spec.study.trials
    columns = [TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("trials", total=target, status="loading data")
        reporter = RichReporter(progress, task, list(spec.objectives))
        url, _ = run_storage(args.storage or spec.study.storage, spec.study.name, 1)
        progress.console.print(f"study {spec.study.name} in {mask_password(url)}", highlight=False)
        with FirstInterrupt():
            summary = run_study(spec, storage_url=url, trials=args.trials, timeout=args.timeout,
                                seed=args.seed, reporter=reporter, artifacts=args.artifacts,
                                repeats=args.repeats)
            progress.update(task, status="interrupted" if summary.interrupted else "done")
    console.print(f"{summary.added} trials added in {summary.seconds:.0f} s; "
                  f"{summary.finished} finished of {target} wanted.", highlight=False)
    print_front(summary.study, mask_password(summary.storage_url))
    if summary.interrupted:
        print_note("interrupted: the running trial is marked failed; run the same command to resume")
        return 130
    return 0


def cmd_worker(args) -> int:
    """One more worker on a shared study: trial lines, no progress bar, no Pareto table."""
    from ..parallel import ThreadShare

    # First of all: from here on, a sibling worker (of run --jobs) that leaves hands this one its threads.
    share = ThreadShare(args.siblings, args.threads or 1) if args.siblings else None
    try:
        return _work(args, share)
    finally:
        if share is not None:
            share.stop()


def _work(args, share) -> int:
    import secrets

    import torch

    from ..parallel import stop_with_parent, wait_for_go
    from ..spec import load_spec
    from ..storage import mask_password, run_storage
    from ..study import run_study

    if args.parent is not None:
        stop_with_parent(args.parent)
    given_url = None
    if args.wait_for_go:  # a worker of run --jobs: its parent names the storage once the spec passed
        from ..measure.sizes import warm_up
        warm_up()  # meanwhile
        given_url = wait_for_go()
        if given_url is None:
            return 0  # the run --jobs process found the spec wrong and says why; nothing was touched
    # Workers that run --jobs started read the file its parent has just checked: loading is enough.
    spec = load_spec(args.spec) if args.spec_checked else _load_checked(args.spec)
    if share is not None:
        share.start()
    elif args.threads:
        torch.set_num_threads(args.threads)
    url = given_url or run_storage(args.storage or spec.study.storage, spec.study.name, 2)[0]
    seed = spec.study.seed if args.seed is None else args.seed
    sampler_seed = seed + args.index if args.index is not None else secrets.randbelow(2**31)
    name = f"worker {args.index}" if args.index is not None else "worker"
    with FirstInterrupt():
        if args.join:
            from ..parallel import wait_for_study
            try:
                wait_for_study(url, spec.study.name)
            except KeyboardInterrupt:
                return 130
        reporter = LineReporter(name, list(spec.objectives))
        summary = run_study(spec, storage_url=url, trials=args.trials, timeout=args.timeout, seed=args.seed,
                            reporter=reporter, sampler_seed=sampler_seed,
                            artifacts=args.artifacts, repeats=args.repeats, leave_when_all_started=share is not None)
    took_up = ""
    if share is not None and share.departed:
        took_up = f"; {share.threads} torch threads after {share.departed} other worker(s) left"
    trials = f"{reporter.ran} trial{'' if reporter.ran == 1 else 's'}"
    print_whole_line(f"{name}: ran {trials} in {summary.seconds:.0f} s; the study has {summary.finished} "
                     f"finished in {mask_password(url)}{took_up}")
    return 130 if summary.interrupted else 0


def _run_jobs(args) -> int:
    """``run --jobs N``: N ``mixsearch worker`` processes on one study, CPU threads split between them."""
    from ..parallel import run_parallel

    def check(spec) -> None:
        from ..validate import require_buildable
        require_buildable(spec)

    def announce(spec, plan) -> None:
        from ..storage import mask_password
        console.print(f"study {spec.study.name} in {mask_password(plan.storage_url)}; {plan.jobs} workers, "
                      f"{plan.threads} torch threads each" + (f" ({plan.note})" if plan.note else ""),
                      highlight=False)

    # The spec file goes in unread: the workers start before this process imports torch to read it.
    summary = run_parallel(args.spec, args.jobs, storage_url=args.storage, trials=args.trials, timeout=args.timeout,
                           seed=args.seed, artifacts=args.artifacts, on_start=announce, repeats=args.repeats,
                           check=check)
    if summary.study is not None:
        from ..storage import mask_password
        print_front(summary.study, mask_password(summary.storage_url))
    if summary.failed:
        raise MixsearchError(f"{len(summary.failed)} of {args.jobs} workers failed (exit codes {summary.failed}); "
                             "see their output above")
    if summary.interrupted:
        print_note("interrupted: running trials are marked failed; run the same command to resume")
        return 130
    return 0
