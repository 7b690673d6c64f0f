"""Across machines: ``mixsearch worker`` processes share one study in a real PostgreSQL server.

The fixture starts a throw-away server (initdb into a scratch directory, loopback only, a free
port) and removes it afterwards. PostgreSQL refuses to run as root, so as root the server runs
as the ``postgres`` (or ``nobody``) user.
"""

from __future__ import annotations

import json
import time
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, start_cli
from pg_server import PASSWORD, Unavailable, postgres_server


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with postgres_server() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


def dashboard_get(storage, path: str):
    """GET ``path`` from optuna-dashboard's own WSGI app on ``storage``; the JSON it answers."""
    from optuna_dashboard import wsgi

    app = wsgi(storage)
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:200])
    return json.loads(body)


def test_two_workers_share_a_postgresql_study(tmp_path, write_spec, postgres_url):
    # Trials long enough (8 epochs) that both workers get some before the target is reached.
    spec = write_spec(study={"name": "shared", "sampler": "random"}, train={"epochs": 8})
    workers = [start_cli(["worker", spec, "--storage", postgres_url, "--trials", "8", "--index", str(i),
                          "--threads", "1"], tmp_path) for i in range(2)]
    outputs = []
    deadline = time.monotonic() + 80
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=max(1, deadline - time.monotonic())))
        finally:
            if worker.poll() is None:
                worker.kill()
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert PASSWORD not in stdout + stderr  # the password is masked everywhere
        assert "mix:***@127.0.0.1" in stdout
    from mixsearch.storage import open_storage

    storage = open_storage(postgres_url, create=False)
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8
    assert sorted(t.number for t in study.trials) == list(range(8))
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both did work

    # optuna-dashboard reads the same storage: the study list and the study with its trials.
    summaries = dashboard_get(storage, "/api/studies")["study_summaries"]
    entry = next(s for s in summaries if s["study_name"] == "shared")
    detail = dashboard_get(storage, f"/api/studies/{entry['study_id']}")
    assert len(detail["trials"]) == 8
    assert detail["objective_names"] == ["accuracy", "params"]
    assert {t["state"] for t in detail["trials"]} <= {"Complete", "Pruned"}

    # `show` works from another process, and prints no password either.
    shown = run_cli(["show", postgres_url, "--study", "shared"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "8 complete" in shown.stdout and PASSWORD not in shown.stdout + shown.stderr


def test_a_wrong_password_is_one_masked_line(tmp_path, write_spec, postgres_url):
    spec = write_spec(study={"name": "shared"})
    bad = postgres_url.replace(PASSWORD, "wrong-pw-123")
    result = run_cli(["worker", spec, "--storage", bad, "--trials", "1"], tmp_path)
    assert result.returncode == 1
    assert "wrong-pw-123" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: storage postgresql://mix:***@"), result.stderr


def test_the_trial_slot_lock_of_a_study_holds_a_postgresql_lock(postgres_url):
    """A study's storage is Optuna's cache around the RDB storage; the lock must reach the database."""
    from sqlalchemy import text

    from mixsearch.optuna_compat import storage_of
    from mixsearch.storage import TrialSlotLock, open_storage

    study = optuna.create_study(study_name="slots", storage=open_storage(postgres_url))
    lock = TrialSlotLock(storage_of(study), postgres_url, "slots")
    probe = text("SELECT pg_try_advisory_lock(hashtext('mixsearch:slots'))")
    with open_storage(postgres_url, create=False).engine.connect() as other:
        lock.acquire()
        try:
            assert other.execute(probe).scalar() is False  # held by the lock
        finally:
            lock.release()
        assert other.execute(probe).scalar() is True  # free again
        other.execute(text("SELECT pg_advisory_unlock(hashtext('mixsearch:slots'))"))
