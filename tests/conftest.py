"""Shared fixtures: a tiny spec file and the real ``mixsearch`` command in a scratch directory."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

# Generated-input tests (tests/test_spec_properties.py): the default keeps them to seconds of
# the suite; `pytest --hypothesis-profile=long` generates thousands of specs for a deeper run.
settings.register_profile("default", max_examples=40)
settings.register_profile("long", max_examples=500)  # x2 validate tests + the run ones: > 1,300 specs

ROOT = Path(__file__).resolve().parents[1]

# Seconds per trial on two CPU cores: bundled MNIST digits, one small Mixer, latency barely timed.
TINY_SPEC = {
    "study": {"name": "tiny", "trials": 4, "seed": 0, "sampler": "random", "pruner": "none"},
    "data": {"dataset": "mnist", "source": "bundled", "train_size": 300, "val_size": 100, "test_size": 100},
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.01},
    "objectives": ["accuracy", "params"],
    "measure": {"latency_min_time": 0.01},
    "space": {"family": "mixer", "layers": [1, 2], "channels": [8, 16], "token_hidden": 16,
              "channel_hidden": 16, "patch_size": [4, 7], "dilation": [1, 2],
              "sharing": {"mode": ["none", "all"], "bias": ["tied", "separate"]}},
}


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, section by section."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


@pytest.fixture
def write_spec(tmp_path):
    """``write_spec(name="x.yaml", **section_changes)`` → path of a tiny spec with those changes."""

    def write(name: str = "tiny.yaml", **changes) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(merge(TINY_SPEC, changes), sort_keys=False))
        return path

    return write


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NO_COLOR": "1",
           "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def start_cli(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``mixsearch ARGS`` as a real process in ``cwd``; stdout and stderr are pipes."""
    return subprocess.Popen([sys.executable, "-m", "mixsearch", *map(str, args)], cwd=cwd, env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixsearch", *map(str, args)], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition()`` until it returns something true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def interrupt_when(process: subprocess.Popen, condition, what: str, signals=(signal.SIGINT,), timeout: float = 60):
    """Once ``condition()`` holds, send ``signals`` to ``process`` and collect its output.

    Returns (what the condition returned, stdout, stderr). The process never outlives the test:
    if the condition times out or the process hangs, it is killed.
    """
    try:
        value = wait_for(condition, timeout, what)
        for number, sig in enumerate(signals):
            if number:  # two signals sent back to back can reach Python's handler as one
                time.sleep(0.5)
            process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        kill_tree(process)
    return value, stdout, stderr


def descendants(pid: int) -> list[int]:
    """Process ids of every live descendant of ``pid`` (from /proc; workers run in their own groups)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and everything it started, if still running, and close its pipes."""
    if process.poll() is None:
        for pid in [*descendants(process.pid), process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        process.communicate(timeout=30)
    except (subprocess.TimeoutExpired, ValueError):  # ValueError: its pipes were read to the end already
        pass
