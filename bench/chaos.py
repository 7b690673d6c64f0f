"""Chaos run: workers SIGKILLed at random for minutes while they share a study; nothing may be lost.

For each backend (a journal file with 3 workers on this machine; a real PostgreSQL server with 2
workers), ``mixsearch worker`` processes run a small study while, every 5-20 s, one of them is
killed with SIGKILL and started again. Right before each kill the finished trials are recorded;
right after it, the trials the dead worker was running. When the kills are done the workers run
on until the study has its trials, then this prints, per backend:

- trials finished vs requested (must be equal);
- trials lost: finished before some kill and missing or changed at the end (must be 0);
- every FAIL trial, its reason, and the trial that retried it (every killed trial must have both);
- duplicate or skipped trial numbers;
- error lines (tracebacks, storage errors) in the workers' output;
- whether ``mixsearch show``, ``mixsearch export`` and the dashboard's HTTP API read the study.

Bounded: at most --kills kills and --minutes of killing per backend, then at most
--drain-minutes for the workers to finish; every process and the PostgreSQL server are stopped
at the end. Exit code 0 when every goal holds, 1 otherwise.

    PYTHONPATH=$PWD python bench/chaos.py                       # both backends, ~15 min
    PYTHONPATH=$PWD python bench/chaos.py --backend journal --kills 5 --minutes 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the package, and the tests' PostgreSQL server

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from mixsearch.errors import UsageError  # noqa: E402
from mixsearch.storage import mask_password, open_storage  # noqa: E402
from pg_server import Unavailable, free_port, postgres_server  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY = "chaos"
# A trial takes seconds on two cores, so a kill every 5-20 s often lands mid-trial.
SPEC = {
    "study": {"name": STUDY, "seed": 0, "sampler": "random", "pruner": "none"},
    "data": {"dataset": "mnist", "source": "bundled", "train_size": 200, "val_size": 100, "test_size": 100},
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.01},
    "objectives": ["accuracy", "params"],
    "measure": {"latency_min_time": 0.01},
    "space": {"family": "mixer", "layers": [1, 2, 3], "channels": [8, 12, 16, 24], "token_hidden": [8, 16, 32],
              "channel_hidden": [16, 32], "patch_size": [4, 7], "dilation": [1, 2],
              "sharing": {"mode": ["none", "all"], "bias": ["tied", "separate"]}},
}
ERROR_LINE = re.compile(r"Traceback|Error|error:|could not|database is locked", re.IGNORECASE)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}


def mixsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "mixsearch", *args]


@dataclass
class Kill:
    at: float                 # seconds since the start
    worker: str               # host:pid of the killed process
    finished_before: dict[int, tuple[str, list[float] | None]]
    running: list[int] = field(default_factory=list)  # its trials that the kill interrupted


class Workers:
    """The worker processes of one backend; each slot is restarted after it is killed."""

    def __init__(self, count: int, command: list[str], workdir: Path):
        self.command = command
        self.workdir = workdir
        self.logs = [workdir / f"worker-{i}.log" for i in range(count)]
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.crashes: list[str] = []
        for slot in range(count):
            self.start(slot)

    def start(self, slot: int) -> None:
        with open(self.logs[slot], "a") as log:
            log.write(f"--- start at {time.strftime('%H:%M:%S')}\n")
            log.flush()
            self.procs[slot] = subprocess.Popen(self.command, cwd=self.workdir, env=env(), stdout=log,
                                                stderr=subprocess.STDOUT)

    def live(self) -> list[int]:
        return [slot for slot, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def reap(self) -> bool:
        """Note workers that ended by themselves; True once all ended with success."""
        for slot, p in enumerate(self.procs):
            if p is not None and p.poll() is not None:
                if p.returncode != 0:
                    self.crashes.append(f"worker slot {slot} (pid {p.pid}) exited with {p.returncode}")
                    self.start(slot)
        return all(p is not None and p.poll() == 0 for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def load(url: str) -> list[optuna.trial.FrozenTrial]:
    """All trials, read through a fresh storage object (no cache can hide a lost trial)."""
    try:
        storage = open_storage(url, create=False)
    except UsageError:  # the first worker has not created the journal file yet
        return []
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        if hasattr(storage, "remove_session"):
            storage.remove_session()
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def finished_map(trials) -> dict[int, tuple[str, list[float] | None]]:
    return {t.number: (t.state.name, t.values) for t in trials if t.state in FINISHED}


def chaos(backend: str, url: str, workdir: Path, workers: int, trials: int, max_kills: int,
          minutes: float, drain_minutes: float, rng: random.Random) -> dict:
    spec = workdir / "chaos.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    artifacts = workdir / "artifacts"
    command = mixsearch("worker", str(spec), "--storage", url, "--trials", str(trials), "--threads", "1",
                        "--artifacts", str(artifacts))
    host = socket.gethostname()
    print(f"[{backend}] {workers} workers, {trials} trials, in {mask_password(url)}", flush=True)
    started = time.monotonic()
    team = Workers(workers, command, workdir)
    kills: list[Kill] = []
    try:
        # The kills start once a trial has finished: the study exists and the workers are up.
        while not finished_map(load(url)) and time.monotonic() - started < 300 and not team.reap():
            time.sleep(1)
        # -- kill phase: every 5-20 s one worker dies, and a new one takes its place ------------
        killing = time.monotonic()
        while len(kills) < max_kills and time.monotonic() - killing < minutes * 60:
            time.sleep(rng.uniform(5, 20))
            if team.reap():
                break
            live = team.live()
            if not live:
                continue
            before = finished_map(load(url))
            if len(before) >= trials:
                break
            slot = rng.choice(live)
            victim = team.procs[slot]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kill = Kill(round(time.monotonic() - started, 1), f"{host}:{victim.pid}", before)
            kill.running = [t.number for t in load(url) if t.user_attrs.get("worker") == kill.worker
                            and t.state in (TrialState.RUNNING, TrialState.FAIL)]
            kills.append(kill)
            print(f"[{backend}] kill {len(kills)} at {kill.at:.0f} s: {kill.worker}, {len(before)} finished, "
                  f"interrupted trial {kill.running or 'none (between trials)'}", flush=True)
            team.start(slot)
        # -- drain: no more kills; the workers end once the study has its trials ----------------
        drain_end = time.monotonic() + drain_minutes * 60
        while time.monotonic() < drain_end and not team.reap():
            time.sleep(1)
        drained = all(p.poll() == 0 for p in team.procs)
    finally:
        team.stop()
    seconds = time.monotonic() - started
    return check(backend, url, workdir, artifacts, team, kills, trials, seconds, drained)


def check(backend, url, workdir, artifacts, team, kills, trials, seconds, drained) -> dict:
    final = load(url)
    by_number = {t.number: t for t in final}
    finished = finished_map(final)
    seen: dict[int, tuple] = {}
    for kill in kills:
        seen.update(kill.finished_before)
    lost = sorted(n for n, before in seen.items() if finished.get(n) != before)
    numbers = Counter(t.number for t in final)
    duplicates = sorted(n for n, c in numbers.items() if c > 1)
    skipped = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
    retries = Counter(t.user_attrs.get("retry_of") for t in final if "retry_of" in t.user_attrs)
    retried_by = {t.user_attrs["retry_of"]: t for t in final if "retry_of" in t.user_attrs}
    failed = [t for t in final if t.state == TrialState.FAIL]
    killed = sorted({n for kill in kills for n in kill.running})
    killed_bad = [n for n in killed if by_number[n].state != TrialState.FAIL or not by_number[n].user_attrs.get("reason")
                  or n not in retried_by]
    stuck = [t.number for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    errors = [f"{log.name}: {line.strip()}" for log in team.logs
              for line in log.read_text(errors="replace").splitlines() if ERROR_LINE.search(line)]
    readers = read_back(url, workdir, artifacts, len(final), len(finished))

    print(f"\n== {backend}: {len(kills)} kills in {seconds / 60:.1f} min "
          f"({'workers finished by themselves' if drained else 'workers did NOT finish: stopped'})")
    print(f"trials finished vs requested: {len(finished)} / {trials}  "
          f"({sum(1 for s, _ in finished.values() if s == 'COMPLETE')} complete, "
          f"{sum(1 for s, _ in finished.values() if s == 'PRUNED')} pruned; {len(final)} trials in all)")
    print(f"finished trials recorded before kills: {len(seen)}; lost since: {len(lost)} {lost or ''}")
    print(f"trials interrupted by a kill: {len(killed)}; failed with a reason and retried: "
          f"{len(killed) - len(killed_bad)}" + (f"; NOT: {killed_bad}" if killed_bad else ""))
    print(f"FAIL trials: {len(failed)}")
    for t in failed:
        retry = retried_by.get(t.number)
        print(f"  trial {t.number:>3}: reason {t.user_attrs.get('reason', '-')!r}; "
              + (f"retried by trial {retry.number} ({retry.state.name.lower()})" if retry else "NOT retried"))
    print(f"duplicate trial numbers: {duplicates or 'none'}; skipped: {skipped or 'none'}; "
          f"trials retried more than once: {sorted(n for n, c in retries.items() if c > 1) or 'none'}; "
          f"left RUNNING or WAITING: {stuck or 'none'}")
    print(f"error lines in workers' output: {len(errors)}")
    for line in errors[:20]:
        print("  " + line)
    print(f"worker exits other than by kill: {team.crashes or 'none'}")
    for name, (ok, note) in readers.items():
        print(f"{name}: {'reads the study' if ok else 'FAILED'} ({note})")

    goals = {
        ">= 30 kills": len(kills) >= 30,
        "0 finished trials lost": not lost,
        "every killed trial failed with a reason and was retried": not killed_bad,
        "exactly the requested count": len(finished) == trials and drained,
        "no duplicate or skipped numbers": not duplicates and not skipped,
        "no storage errors": not errors and not team.crashes,
        "show, export, dashboard read it": all(ok for ok, _ in readers.values()),
    }
    for goal, ok in goals.items():
        print(f"  [{'x' if ok else ' '}] {goal}")
    return {"backend": backend, "kills": len(kills), "minutes": round(seconds / 60, 1), "finished": len(finished),
            "requested": trials, "lost": len(lost), "killed": len(killed), "killed_bad": len(killed_bad),
            "failed": len(failed), "errors": len(errors), "goals": goals}


def read_back(url: str, workdir: Path, artifacts: Path, total: int, finished: int) -> dict[str, tuple[bool, str]]:
    """``mixsearch show``, ``export`` and the dashboard's HTTP API, each as a real process."""
    results = {}
    shown = subprocess.run(mixsearch("show", url, "--study", STUDY), cwd=workdir, env=env(), capture_output=True,
                           text=True, timeout=120)
    counts = re.search(r"^trials: (.*)$", shown.stdout, re.MULTILINE)
    results["mixsearch show"] = (shown.returncode == 0 and counts is not None,
                                 counts.group(1) if counts else shown.stderr.strip()[-200:])
    out = workdir / "exported"
    exported = subprocess.run(mixsearch("export", url, "--study", STUDY, "-o", str(out), "--artifacts", str(artifacts)),
                              cwd=workdir, env=env(), capture_output=True, text=True, timeout=300)
    files = sorted(out.glob("*.yaml")) if out.is_dir() else []
    results["mixsearch export"] = (exported.returncode == 0 and bool(files),
                                   f"{len(files)} Pareto trials written" if files else exported.stderr.strip()[-200:])
    port = free_port()
    server = subprocess.Popen(mixsearch("dashboard", url, "--study", STUDY, "--port", str(port)), cwd=workdir,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        deadline = time.monotonic() + 60
        answer, note = None, "no answer in 60 s"
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(api, timeout=10) as response:
                    summaries = json.load(response)["study_summaries"]
                study_id = next(s["study_id"] for s in summaries if s["study_name"] == STUDY)
                with urllib.request.urlopen(f"{api}/{study_id}", timeout=30) as response:
                    answer = json.load(response)
                break
            except OSError as exc:
                note = str(exc)
                time.sleep(0.5)
        if answer is not None:
            states = Counter(t["state"] for t in answer["trials"])
            results["dashboard API"] = (len(answer["trials"]) == total
                                        and states["Complete"] + states["Pruned"] == finished,
                                        f"{len(answer['trials'])} trials: {dict(states)}")
        else:
            results["dashboard API"] = (False, note)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("journal", "postgres", "both"), default="both")
    parser.add_argument("--trials", type=int, help="trials requested (default: 150 journal, 120 postgres)")
    parser.add_argument("--kills", type=int, default=32, help="kills per backend, at most (default 32)")
    parser.add_argument("--minutes", type=float, default=9, help="minutes of killing per backend, at most (default 9)")
    parser.add_argument("--drain-minutes", type=float, default=6,
                        help="minutes the workers get to finish after the kills (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and victims")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = []
    backends = ("journal", "postgres") if args.backend == "both" else (args.backend,)
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix=f"mixsearch-chaos-{backend}-") as scratch:
            workdir = Path(scratch)
            common = dict(max_kills=args.kills, minutes=args.minutes, drain_minutes=args.drain_minutes, rng=rng)
            if backend == "journal":
                (workdir / "studies").mkdir()
                results.append(chaos(backend, f"journal:{workdir / 'studies' / 'chaos.log'}", workdir, 3,
                                     args.trials or 150, **common))
                continue
            try:
                with postgres_server(database="chaos") as url:
                    results.append(chaos(backend, url, workdir, 2, args.trials or 120, **common))
            except Unavailable as exc:
                print(f"[postgres] skipped: {exc}")
    print("\nsummary: " + "; ".join(f"{r['backend']}: {r['kills']} kills, {r['finished']}/{r['requested']} finished, "
                                    f"{r['lost']} lost, {r['killed'] - r['killed_bad']}/{r['killed']} killed trials "
                                    f"failed+retried, {r['errors']} error lines" for r in results))
    return 0 if results and all(all(r["goals"].values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
