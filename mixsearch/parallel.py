"""Several worker processes on one study, on this machine: spawn, supervise, forward interrupts.

Each worker is a ``mixsearch worker`` process running ``run_study`` on the shared storage, so a
crash in one trial takes down one worker, not the run. CPU threads are split between workers, and
when one leaves (the study has no trial left to start, or it failed) the others take up its threads.

Starting a worker needs only the spec's path, so ``run_parallel`` starts them before it imports
torch and Optuna itself: this module imports them only inside its functions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from .errors import UsageError

if TYPE_CHECKING:
    import optuna

    from .spec import Spec

STARTUP_POLL_SECONDS = 0.2  # how often the first worker is checked for having created the study
EXIT_POLL_SECONDS = 0.2  # how often the workers are checked for having left
# Sent to every running worker each time another one leaves: its threads are free to take up.
SIBLING_LEFT = signal.SIGUSR1


@dataclass
class WorkerPlan:
    storage_url: str
    jobs: int
    threads: int  # torch CPU threads per worker
    note: str | None  # why the storage is what it is, when it was chosen for the workers


@dataclass
class ParallelSummary:
    study: optuna.Study | None  # None when no worker got as far as creating the study
    storage_url: str
    exit_codes: list[int] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> list[int]:
        """Exit codes of the workers that failed (130 is an interrupted worker, not a failure)."""
        return [c for c in self.exit_codes if c not in (0, 130)]


def threads_per_worker(jobs: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def plan_workers(spec: Spec, jobs: int, storage_url: str | None = None) -> WorkerPlan:
    from .storage import run_storage

    url, note = run_storage(storage_url or spec.study.storage, spec.study.name, jobs)
    return WorkerPlan(url, jobs, threads_per_worker(jobs), note)


def worker_command(spec_file: str, jobs: int, trials: int | None = None, timeout: float | None = None,
                   seed: int | None = None, artifacts: str | None = None, repeats: int | None = None) -> list[str]:
    """The ``mixsearch worker`` command line every worker of ``run_parallel`` runs (``--index`` is
    added per worker). It needs nothing from the spec but its path: the storage URL comes later,
    with the "go" on the worker's standard input."""
    command = [sys.executable, "-m", "mixsearch", "worker", spec_file, "--threads", str(threads_per_worker(jobs)),
               "--siblings", str(jobs), "--spec-checked", "--parent", str(os.getpid()), "--wait-for-go"]
    for flag, value in (("--trials", trials), ("--timeout", timeout), ("--seed", seed), ("--artifacts", artifacts),
                        ("--repeats", repeats)):
        if value is not None:
            command += [flag, str(value)]
    return command


def run_parallel(spec: Spec | str, jobs: int, storage_url: str | None = None, trials: int | None = None,
                 timeout: float | None = None, seed: int | None = None, artifacts: str | None = None,
                 on_start: Callable[[Spec, WorkerPlan], None] | None = None, repeats: int | None = None,
                 check: Callable[[Spec], None] | None = None) -> ParallelSummary:
    """Run ``jobs`` worker processes on the study until it has ``trials`` finished trials.

    ``spec`` is a spec file's path, or a spec loaded from its file (``load_spec``): the workers
    read the file. Without a storage, several workers share the journal file
    ``studies/<name>.log`` (see ``default_run_storage``). A KeyboardInterrupt is passed on to every
    worker once (each fails its running trial and exits); a second one kills them and propagates.
    Workers print their own trial lines. The spec is loaded and ``check`` (say, that the space has
    a buildable arch) runs while the workers start up; if either raises, the workers leave before
    touching the storage and the exception propagates.
    """
    spec_file = str(spec) if isinstance(spec, (str, Path)) else spec.source
    if not Path(spec_file).is_file():
        if isinstance(spec, (str, Path)):
            from .spec import load_spec
            load_spec(spec_file)  # says what is wrong with the path
        raise UsageError(f"{spec_file}: parallel workers read the spec from its file; load it with load_spec")
    command = worker_command(spec_file, jobs, trials, timeout, seed, artifacts, repeats)
    started = time.perf_counter()
    # Own process groups: a terminal's Ctrl-C reaches only this process, which passes on exactly
    # one SIGINT (a second one would make a worker quit without failing its trial). All workers
    # start at once, before this process imports torch, so their imports overlap with each other
    # and with loading and checking the spec here; they wait for a "go" on their standard input.
    # Then the first creates the study (and queues its enqueued entries), the others (--join)
    # wait in their own process until it is set up.
    with _ignored_in_children(SIBLING_LEFT):
        workers = [subprocess.Popen(command + ["--index", str(i)] + (["--join"] if i else []),
                                    process_group=0, stdin=subprocess.PIPE) for i in range(jobs)]
    try:
        from .storage import load_study, mask_password, open_storage, study_names

        if isinstance(spec, (str, Path)):
            from .spec import load_spec
            spec = load_spec(spec_file)
        if check is not None:
            check(spec)
        plan = plan_workers(spec, jobs, storage_url)
        storage = open_storage(plan.storage_url)  # the schema exists before any worker opens it
        if on_start is not None:  # only once the storage opened: a wrong URL is the only line printed
            on_start(spec, plan)
    except BaseException:
        _tell(workers, b"")  # no "go": each leaves at once
        for w in workers:
            w.wait()
        raise
    _tell(workers, f"go {plan.storage_url}\n".encode())  # through a pipe: a password stays off the command lines
    name = spec.study.name
    interrupted = False
    try:
        while workers[0].poll() is None and not _study_ready(storage, name):
            time.sleep(STARTUP_POLL_SECONDS)
        if not _study_ready(storage, name):  # the first worker failed before creating it
            _interrupt(workers[1:])
    except KeyboardInterrupt:
        interrupted = True
        _interrupt(workers)
    while True:
        try:
            codes = _wait_for_workers(workers, announce_departures=not interrupted)
            break
        except KeyboardInterrupt:
            if interrupted:
                for w in workers:
                    w.kill()
                raise
            interrupted = True
            _interrupt(workers)
    study = load_study(storage, name, mask_password(plan.storage_url)) if name in study_names(storage) else None
    return ParallelSummary(study, plan.storage_url, codes, interrupted or 130 in codes,
                           time.perf_counter() - started)


@contextlib.contextmanager
def _ignored_in_children(signum: int):
    """Processes started within ignore ``signum`` until they set a handler (an ignored signal stays
    ignored across exec): a SIBLING_LEFT sent to a worker still starting up must not end it, as the
    signal's default action would. This process ignores it meanwhile too (only possible, and only
    done, on the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _wait_for_workers(workers: list[subprocess.Popen], announce_departures: bool) -> list[int]:
    """Wait until every worker has left; their exit codes. Each time one leaves, the others still
    running are sent SIBLING_LEFT (see ``ThreadShare``), unless ``announce_departures`` is
    off (after an interrupt, when they are all leaving)."""
    gone: set[int] = set()
    while len(gone) < len(workers):
        left = [i for i, w in enumerate(workers) if i not in gone and w.poll() is not None]
        gone.update(left)
        if left and announce_departures:
            for i, w in enumerate(workers):
                if i not in gone:
                    with contextlib.suppress(ProcessLookupError):
                        w.send_signal(SIBLING_LEFT)
        if len(gone) < len(workers):
            time.sleep(EXIT_POLL_SECONDS)
    return [w.returncode for w in workers]


class ThreadShare:
    """The torch threads of a worker of ``run --jobs``: its planned share, and those of the workers
    that have left.

    ``siblings`` workers were started with ``threads`` each on ``cores`` CPUs (default: those this
    process may run on). Each SIBLING_LEFT from the parent says one more has left; this worker then
    runs ``max(threads, cores // workers still running)`` threads. So the last trials of a study,
    which one worker often trains alone while the others have nothing left to start, get the whole
    machine. Two departures announced at once may arrive as one signal: the worker then takes up
    fewer threads than it could, never more than there are cores.

    Made first thing in a worker, before torch is imported (until then the worker ignores the
    signal, see ``_ignored_in_children``); ``start`` sets the threads once torch is in, and ``stop``
    ignores the signal again once the worker has no more trials to run: the interpreter's shutdown
    would restore the default action, which ends the process with an error code.
    """

    active: ClassVar[ThreadShare | None] = None  # this process's, once made

    def __init__(self, siblings: int, threads: int, cores: int | None = None):
        self.siblings = siblings
        self.planned = threads
        self.cores = cores or len(os.sched_getaffinity(0))
        self.departed = 0
        self.held = False  # inside ``threads_held``: a new count waits
        self._torch = None
        signal.signal(SIBLING_LEFT, self._sibling_left)
        ThreadShare.active = self

    @property
    def threads(self) -> int:
        return max(self.planned, self.cores // (self.siblings - self.departed))

    def start(self) -> None:
        import torch

        self._torch = torch
        self.apply()

    def apply(self) -> None:
        if self._torch is not None and not self.held:
            self._torch.set_num_threads(self.threads)

    def stop(self) -> None:
        signal.signal(SIBLING_LEFT, signal.SIG_IGN)
        ThreadShare.active = None

    def _sibling_left(self, signum, frame) -> None:  # runs in the main thread, between two Python steps
        self.departed = min(self.departed + 1, self.siblings - 1)
        self.apply()


@contextlib.contextmanager
def threads_held():
    """Inside, torch's thread count is the caller's (a latency timing's): a worker that learns
    of a sibling's departure meanwhile takes up its threads only on leaving the block."""
    share = ThreadShare.active
    if share is None or share.held:
        yield
        return
    share.held = True
    try:
        yield
    finally:
        share.held = False
        share.apply()


def wait_for_go() -> str | None:
    """The storage URL from the ``run --jobs`` process that started this worker once its spec check
    passed ("go URL" on standard input), or None when it found the spec wrong."""
    word, _, url = sys.stdin.readline().strip().partition(" ")
    return url if word == "go" and url else None


def stop_with_parent(parent_pid: int) -> None:
    """Have the kernel send this worker SIGINT when ``parent_pid``, the ``run --jobs`` process, dies.

    Workers run in their own process groups, so a terminal's Ctrl-C reaches only the parent. Were
    the parent killed outright (SIGKILL, SIGTERM, a crash), they would run on, orphaned, writing to
    its output. SIGINT stops each as a Ctrl-C does: its running trial fails as "interrupted".
    Linux only (prctl); elsewhere a worker outlives its parent and finishes the study alone.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGINT))
    if os.getppid() != parent_pid:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGINT)


def wait_for_study(storage_url: str, name: str) -> None:
    """Block until another worker has created the study ``name`` and set it up (``worker --join``)."""
    from .storage import open_storage

    storage = open_storage(storage_url)
    while not _study_ready(storage, name):
        time.sleep(STARTUP_POLL_SECONDS)


def _study_ready(storage: optuna.storages.BaseStorage, name: str) -> bool:
    from .storage import load_study, quiet_experimental, study_names

    if name not in study_names(storage):
        return False
    with quiet_experimental():
        return load_study(storage, name, name).metric_names is not None


def _tell(workers: list[subprocess.Popen], message: bytes) -> None:
    """Write ``message`` to each worker's standard input and close it (a worker that died is skipped)."""
    for w in workers:
        with contextlib.suppress(BrokenPipeError):
            w.stdin.write(message)
        with contextlib.suppress(BrokenPipeError):  # closing flushes, and may find the pipe broken too
            w.stdin.close()


def _interrupt(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGINT)
