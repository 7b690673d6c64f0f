"""``mixsearch run --jobs N``: several worker processes on one study, on this machine."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from conftest import cli_env, kill_tree, run_cli


def test_three_workers_reach_exactly_the_requested_trials(tmp_path, write_spec):
    # Trials long enough (6 epochs) that every worker gets some before the target is reached.
    spec = write_spec(study={"sampler": "random"}, train={"epochs": 6})
    result = run_cli(["run", spec, "--jobs", "3", "--trials", "12"], tmp_path, timeout=85)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error" not in result.stderr.lower()
    # The default SQLite file is swapped for a journal file, and the run says so.
    journal = tmp_path / "studies" / "tiny.log"
    assert journal.is_file() and not (tmp_path / "studies" / "tiny.db").exists()
    assert "3 workers share the study through the journal file" in result.stdout
    assert "Pareto front of tiny" in result.stdout

    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 12
    assert sorted(t.number for t in study.trials) == list(range(12))  # no gap, nothing extra
    # All three workers did work, each under its own process.
    assert len({t.user_attrs["worker"] for t in study.trials}) == 3
    assert sum(line.startswith("worker ") and " trial " in line for line in result.stdout.splitlines()) == 12
    # Each worker's closing line counts the trials it ran, and those the study had when it left.
    ran = re.findall(r"^worker \d: ran (\d+) trials? in [\d.]+ s; the study has (\d+) finished", result.stdout, re.M)
    assert len(ran) == 3 and sum(int(mine) for mine, _ in ran) == 12

    # `show` finds the journal from the spec alone.
    shown = run_cli(["show", spec], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "12 complete" in shown.stdout


def test_workers_resume_a_study_and_stop_at_the_target(tmp_path, write_spec):
    spec = write_spec(train={"epochs": 1})
    assert run_cli(["run", spec, "--jobs", "2", "--trials", "3"], tmp_path, timeout=60).returncode == 0
    again = run_cli(["run", spec, "--jobs", "2", "--trials", "5"], tmp_path, timeout=60)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "studies" / "tiny.log"))))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5
    assert sorted(t.number for t in study.trials) == list(range(5))


def _two_trials_training(journal: Path):
    """A condition for ``interrupt_when``: both workers are inside a trial that has an epoch done."""
    def condition() -> bool:
        if not journal.is_file():
            return False
        try:
            study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
        except KeyError:  # the file exists, the study not yet
            return False
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return len([t for t in running if t.user_attrs.get("curve")]) == 2
    return condition


# Trials of 400 tiny epochs (10-20 s): the two running trials are stopped after an epoch or so,
# and the first must not end on its own between the check and the signal (with 40 epochs, about
# 2 s, it once did).
LONG_TRIALS = {"epochs": 400}


def test_ctrl_c_stops_every_worker_cleanly(tmp_path, write_spec):
    from conftest import interrupt_when, start_cli

    spec = write_spec(train=LONG_TRIALS)
    journal = tmp_path / "studies" / "tiny.log"
    process = start_cli(["run", spec, "--jobs", "2", "--trials", "6"], tmp_path)
    # 120 s: once, in a whole-suite run, a worker still waited on Optuna's journal lock file 60 s
    # after the Ctrl-C (30 runs of this test alone stopped in 8-11 s). Journals are now locked with
    # flock (the tests at the end of this file), which a Ctrl-C or a dead holder cannot leave behind.
    _, stdout, stderr = interrupt_when(process, _two_trials_training(journal), "two RUNNING trials with an epoch",
                                       timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Pareto front of tiny" in stdout
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert not study.get_trials(states=(TrialState.RUNNING,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2 and all(t.user_attrs["reason"] == "interrupted" for t in failed), \
        [(t.number, t.state.name, t.user_attrs.get("reason")) for t in study.trials]


def test_workers_stop_when_their_parent_is_killed(tmp_path, write_spec):
    # SIGKILL leaves the parent no chance to pass anything on: the kernel tells the workers.
    from conftest import descendants, kill_tree, start_cli, wait_for

    spec = write_spec(train=LONG_TRIALS)
    journal = tmp_path / "studies" / "tiny.log"
    process = start_cli(["run", spec, "--jobs", "2", "--trials", "6"], tmp_path)
    try:
        wait_for(_two_trials_training(journal), 60, "two RUNNING trials with an epoch")
        workers = descendants(process.pid)
        assert len(workers) == 2
        process.kill()
        process.wait()

        def workers_gone() -> bool:  # exited: no longer listed, or a zombie nobody has reaped yet
            return not any(Path(f"/proc/{pid}/cmdline").is_file() and Path(f"/proc/{pid}/cmdline").read_bytes()
                           for pid in workers)
        wait_for(workers_gone, 60, "the orphaned workers to stop")
    finally:
        kill_tree(process)
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert not study.get_trials(states=(TrialState.RUNNING,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2 and all(t.user_attrs["reason"] == "interrupted" for t in failed)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) < 6  # they stopped, not finished


def test_run_jobs_starts_its_workers_before_it_imports_torch_or_optuna(tmp_path, write_spec):
    """Those imports take seconds; the workers' own overlap the parent's only if it starts them first.
    The storage URL reaches the workers later, through a pipe: a password stays off command lines."""
    url = "postgresql://mix:hunter2@127.0.0.1:9/search"
    probe = ("import subprocess, sys\n"
             "def first_worker(command, **kwargs):\n"
             "    print('torch' in sys.modules, 'optuna' in sys.modules, command[3:5], 'hunter2' in str(command))\n"
             "    raise SystemExit(0)\n"
             "subprocess.Popen = first_worker\n"
             "from mixsearch.cli import main\n"
             f"main(['run', {str(write_spec())!r}, '--jobs', '2', '--storage', {url!r}])\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=cli_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"False False ['worker', {str(tmp_path / 'tiny.yaml')!r}] False\n"


def test_run_jobs_with_a_wrong_storage_url_prints_only_the_error(tmp_path, write_spec):
    result = run_cli(["run", write_spec(), "--jobs", "2", "--storage", "bogus://x"], tmp_path, timeout=90)
    assert result.returncode == 1
    assert result.stdout == ""  # no "study ... in bogus://x; 2 workers" announcement first
    assert result.stderr.splitlines() == [
        "error: storage bogus://x: cannot open it (Can't load plugin: sqlalchemy.dialects:bogus)"]
    assert not (tmp_path / "studies").exists()


def test_run_study_with_jobs_runs_workers_from_python(tmp_path, write_spec, monkeypatch):
    from mixsearch.parallel import ParallelSummary
    from mixsearch.spec import load_spec
    from mixsearch.study import run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the workers import this copy
    spec = load_spec(write_spec(train={"epochs": 1}))
    summary = run_study(spec, trials=3, jobs=2)
    assert isinstance(summary, ParallelSummary)
    assert summary.exit_codes == [0, 0] and not summary.failed and not summary.interrupted
    assert summary.storage_url == "journal:studies/tiny.log"
    assert len(summary.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3


def test_workers_queue_the_enqueued_entries_once_and_pass_repeats_on(tmp_path, write_spec):
    # The first worker creates the study and queues the entries; the second joins only after.
    entries = [{"label": f"L{layers}", "space": {"layers": layers, "channels": 8, "patch_size": 7, "dilation": 1,
                                                  "sharing": {"mode": "none", "bias": "tied"}}} for layers in (1, 2)]
    spec = write_spec(study={"enqueue": entries}, train={"epochs": 1},
                      data={"train_size": 200, "val_size": 100, "test_size": 100})
    result = run_cli(["run", spec, "--jobs", "2", "--trials", "2", "--repeats", "2"], tmp_path, timeout=90)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "studies" / "tiny.log"))))
    assert len(study.trials) == 2  # no second, WAITING copy of the entries
    assert sorted(t.user_attrs["label"] for t in study.trials) == ["L1", "L2"]
    assert all(len(t.user_attrs["test_accuracy_seeds"]) == 2 for t in study.trials)


def test_a_joining_worker_waits_for_the_study_and_then_works_on_it(tmp_path, write_spec):
    from conftest import start_cli

    spec = write_spec(train={"epochs": 2})
    journal = tmp_path / "tiny.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    joiner = start_cli(["worker", spec, "--storage", f"journal:{journal}", "--index", "1", "--join",
                        "--trials", "4"], tmp_path)
    time.sleep(8)  # long past its imports: it must still be waiting, having created nothing
    assert joiner.poll() is None, joiner.communicate()
    assert optuna.get_all_study_names(storage) == []
    first = run_cli(["worker", spec, "--storage", f"journal:{journal}", "--index", "0", "--trials", "4"], tmp_path)
    out, err = joiner.communicate(timeout=60)
    assert first.returncode == 0 and joiner.returncode == 0, (first.stderr, err)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4
    assert "worker 1: " in out and "Traceback" not in err


def _one_finished_and_theirs_running(tmp_path):
    """(spec, url, the study as another worker sees it, that worker's trial): the tiny study in a
    SQLite file with one finished trial and one of another worker under way."""
    import socket

    from conftest import TINY_SPEC
    from mixsearch.spec import parse_spec
    from mixsearch.study import run_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = parse_spec(TINY_SPEC, "tiny.yaml")
    run_study(spec, storage_url=url, trials=1)
    other = optuna.load_study(study_name="tiny", storage=url)
    theirs = other.ask()  # another worker's trial, under way: a live process on this machine
    theirs.set_user_attr("worker", f"{socket.gethostname()}:{os.getppid()}")
    return spec, url, other, theirs


def test_a_trial_that_ends_while_a_worker_counts_does_not_start_an_extra_one(tmp_path, monkeypatch):
    """A worker decides whether to start a trial from finished plus running trials. Another
    worker's trial that finishes while it counts must be counted once, as finished or as running:
    counted in neither, the study overshoots its target (seen on PostgreSQL: 9 finished of 8)."""
    from optuna.storages._cached_storage import _CachedStorage

    import mixsearch.study as study_module

    spec, url, other, theirs = _one_finished_and_theirs_running(tmp_path)
    armed = False  # from just after the slot check's recovery step...
    original_recover, original_read = study_module.recover_trials, _CachedStorage.get_all_trials

    def recover_then_arm(study):
        nonlocal armed
        queued = original_recover(study)
        armed = True
        return queued

    def read_then_finish_theirs(self, *args, **kwargs):
        nonlocal armed
        trials = original_read(self, *args, **kwargs)
        if armed:  # ...their trial finishes right after the worker's next read of the study
            armed = False
            if other.trials[theirs.number].state == TrialState.RUNNING:
                other.tell(theirs.number, [0.5, 1000.0])
        return trials

    monkeypatch.setattr(study_module, "recover_trials", recover_then_arm)
    monkeypatch.setattr(_CachedStorage, "get_all_trials", read_then_finish_theirs)
    # One finished and theirs running: the 2 trials asked for are all under way, so this worker
    # only waits for theirs to end.
    summary = study_module.run_study(spec, storage_url=url, trials=2)
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert summary.added == 1 and summary.finished == 2


def test_a_worker_of_run_jobs_leaves_once_every_trial_is_under_way_and_the_survivor_finishes(tmp_path, monkeypatch):
    """``leave_when_all_started``: with the target's trials all under way, a worker returns at once
    (its parent then hands its threads to the others) and draws no plots; a worker whose trial
    fails after that starts the next one itself, so the study still reaches its target."""
    import mixsearch.study as study_module

    spec, url, other, theirs = _one_finished_and_theirs_running(tmp_path)
    drawn = []
    monkeypatch.setattr(study_module, "refresh_plots", lambda study: drawn.append(len(study.trials)))
    started = time.perf_counter()
    summary = study_module.run_study(spec, storage_url=url, trials=2, leave_when_all_started=True)
    assert time.perf_counter() - started < study_module.POLL_SECONDS * 4  # no waiting for theirs
    assert (summary.added, summary.finished, drawn) == (0, 1, [])
    assert other.trials[theirs.number].state == TrialState.RUNNING  # left to its worker

    other.tell(theirs.number, state=TrialState.FAIL)  # their trial fails once this worker has left
    summary = study_module.run_study(spec, storage_url=url, trials=2, leave_when_all_started=True)
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert (summary.added, summary.finished, drawn) == (1, 2, [3])  # ended last: it draws


@pytest.mark.parametrize("theirs_ends", ["first", "last"])
def test_only_the_worker_whose_trial_ends_last_draws_the_final_plots(tmp_path, monkeypatch, theirs_ends):
    """Each worker ends by waiting for the others' trials; the one whose trial ended last has seen
    every trial and draws the plots a last time, the others skip it."""
    import mixsearch.study as study_module
    from mixsearch.trial import Reporter

    spec, url, other, theirs = _one_finished_and_theirs_running(tmp_path)

    class FinishTheirs(Reporter):  # theirs ends while ours runs, or just after ours has ended
        def trial_started(self, number, arch):
            if theirs_ends == "first":
                other.tell(theirs.number, [0.5, 1000.0])

        def trial_finished(self, trial):
            if theirs_ends == "last":
                other.tell(theirs.number, [0.5, 1000.0])

    drawn = []
    monkeypatch.setattr(study_module, "refresh_plots", lambda study: drawn.append(len(study.trials)))
    summary = study_module.run_study(spec, storage_url=url, trials=3, reporter=FinishTheirs())
    assert summary.finished == 3
    assert drawn == ([3] if theirs_ends == "first" else [])


# -- the journal's lock ---------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from mixsearch.storage import JournalFlock
JournalFlock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""

_APPEND = """
import sys
import optuna
from mixsearch.storage import open_storage
storage = open_storage("journal:" + sys.argv[1])
print("appending", flush=True)
optuna.create_study(storage=storage, study_name="second")
print("appended", flush=True)
"""


def _python(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lock_is_held(journal: Path) -> bool:
    fd = os.open(journal, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextmanager
def _appender_waiting_on_a_holder(journal: Path):
    """(holder, appender): one process holds the journal's lock; another, going through
    ``open_storage``, has started an append. Both are killed afterwards."""
    journal.touch()
    holder, appender = _python(_HOLD_LOCK, journal), None
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        appender = _python(_APPEND, journal)
        assert appender.stdout.readline().strip() == "appending", appender.stderr.read()
        yield holder, appender
    finally:
        for process in (holder, appender):
            if process is not None:
                kill_tree(process)


def _study_names(journal: Path) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(JournalStorage(JournalFileBackend(str(journal))))]


def test_a_worker_killed_while_it_holds_the_journal_lock_does_not_stall_the_others(tmp_path):
    journal = tmp_path / "study.log"
    with _appender_waiting_on_a_holder(journal) as (holder, appender):
        with pytest.raises(subprocess.TimeoutExpired):
            appender.wait(timeout=3)  # its append waits for the holder
        holder.send_signal(signal.SIGKILL)  # dies holding the lock, as a worker killed for memory would
        out, err = appender.communicate(timeout=15)  # Optuna's lock files would stall it for 30 s
        assert appender.returncode == 0 and "appended" in out, err
    assert _study_names(journal) == ["second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.log"]  # no lock file left beside it


def test_a_ctrl_c_while_waiting_for_the_journal_lock_leaves_the_holder_its_lock(tmp_path):
    journal = tmp_path / "study.log"
    with _appender_waiting_on_a_holder(journal) as (holder, appender):
        time.sleep(1)
        appender.send_signal(signal.SIGINT)
        _, err = appender.communicate(timeout=15)
        assert appender.returncode != 0 and "KeyboardInterrupt" in err
        # Optuna's lock files: the interrupted waiter removed the holder's lock on its way out.
        assert holder.poll() is None and _lock_is_held(journal)
    assert not _lock_is_held(journal)  # and the holder's death released it
    assert _study_names(journal) == []


def test_a_journal_on_a_file_system_without_flock_falls_back_to_optunas_lock_file(tmp_path, monkeypatch):
    import errno

    import mixsearch.storage as storage

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    made = []
    optunas_lock = storage.JournalFileSymlinkLock
    monkeypatch.setattr(storage.fcntl, "flock", no_flock)
    monkeypatch.setattr(storage, "JournalFileSymlinkLock", lambda path: made.append(path) or optunas_lock(path))
    journal = tmp_path / "study.log"
    study = optuna.create_study(storage=storage.open_storage(f"journal:{journal}"), study_name="fallback")
    study.set_user_attr("appended", 2)
    assert made == [str(journal)]  # one fallback lock, made at the first append and kept
    monkeypatch.undo()
    reread = optuna.load_study(study_name="fallback", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert reread.user_attrs == {"appended": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.log"]  # its lock file went after each append


@pytest.fixture
def restore_threads_and_sibling_signal():
    import torch

    from mixsearch.parallel import SIBLING_LEFT, ThreadShare
    threads, handler = torch.get_num_threads(), signal.getsignal(SIBLING_LEFT)
    yield
    torch.set_num_threads(threads)
    signal.signal(SIBLING_LEFT, handler)
    ThreadShare.active = None


def test_a_worker_takes_up_the_threads_of_the_workers_that_leave(restore_threads_and_sibling_signal):
    import torch

    from mixsearch.parallel import SIBLING_LEFT, ThreadShare, threads_held
    torch.set_num_threads(1)
    share = ThreadShare(siblings=3, threads=1, cores=4)
    signal.raise_signal(SIBLING_LEFT)  # before the worker has set torch up: counted, applied at start
    assert (share.departed, share.threads, torch.get_num_threads()) == (1, 2, 1)
    share.start()
    assert torch.get_num_threads() == 2  # 4 cores, 2 workers still running
    signal.raise_signal(SIBLING_LEFT)
    assert (share.departed, share.threads, torch.get_num_threads()) == (2, 4, 4)  # alone: every core
    signal.raise_signal(SIBLING_LEFT)  # a stray signal never counts this worker out
    assert (share.departed, torch.get_num_threads()) == (2, 4)
    share.stop()
    signal.raise_signal(SIBLING_LEFT)  # ignored now, as during the interpreter's shutdown
    assert signal.getsignal(SIBLING_LEFT) is signal.SIG_IGN
    assert ThreadShare.active is None

    # Never fewer than planned: 2 workers of 3 threads on 4 cores keep their 3 while both run.
    share = ThreadShare(siblings=2, threads=3, cores=4)
    share.start()
    assert torch.get_num_threads() == 3
    # A latency timing in eager torch holds its own thread count; the departure waits for its end.
    with threads_held():
        torch.set_num_threads(1)
        signal.raise_signal(SIBLING_LEFT)
        assert (share.threads, torch.get_num_threads()) == (4, 1)
    assert torch.get_num_threads() == 4
    share.stop()


SIGNAL_COUNTER = """
import signal, sys, time
received = []
signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
print("ready", flush=True)
deadline = time.monotonic() + 20
while not received and time.monotonic() < deadline:
    time.sleep(0.05)
print(len(received), flush=True)
"""


def test_when_a_worker_leaves_the_others_are_told_and_a_worker_starting_up_ignores_it():
    from mixsearch.parallel import SIBLING_LEFT, _ignored_in_children, _wait_for_workers

    assert SIBLING_LEFT == signal.SIGUSR1
    with _ignored_in_children(SIBLING_LEFT):
        leaving = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"])
        staying = subprocess.Popen([sys.executable, "-c", SIGNAL_COUNTER], stdout=subprocess.PIPE, text=True)
        # No handler of its own: the ignored signal, inherited, keeps it alive.
        starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    assert signal.getsignal(SIBLING_LEFT) is not signal.SIG_IGN  # this process has its own handler back
    try:
        assert staying.stdout.readline() == "ready\n"
        codes = _wait_for_workers([leaving, staying, starting], announce_departures=True)
        assert codes == [3, 0, 0]
        assert staying.stdout.read().split() == ["1"]
    finally:
        for process in (leaving, staying, starting):
            process.kill()
            process.wait()
