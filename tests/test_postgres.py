"""Across machines: ``mixsearch worker`` processes share one study in a real PostgreSQL server.

The fixture starts a throw-away server (initdb into a scratch directory, loopback only, a free
port) and removes it afterwards. PostgreSQL refuses to run as root, so as root the server runs
as the ``postgres`` (or ``nobody``) user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, start_cli

PG_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/14/bin")
PASSWORD = "s3cr3t-pw"


def _pg_binary(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in PG_DIRS if os.access(f"{d}/{name}", os.X_OK)), None)


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    psycopg2 = pytest.importorskip("psycopg2", reason="the psycopg2 driver is not installed")
    user = _server_user()
    # Not under pytest's tmp_path: its parents are private to root, and the server user must enter.
    home = Path(tempfile.mkdtemp(prefix="mixsearch-pg-"))
    data = home / "data"
    (home / "pw").write_text(PASSWORD)
    wrap = ["runuser", "-u", user, "--"] if user else []
    if user:
        record = pwd.getpwnam(user)
        for path in (home, home / "pw"):
            os.chown(path, record.pw_uid, record.pw_gid)
    port = _free_port()
    try:
        subprocess.run(wrap + [initdb, "-D", str(data), "-U", "mix", f"--pwfile={home / 'pw'}",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
                       check=True, capture_output=True, timeout=60)
        options = f"-k {home} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        subprocess.run(wrap + [pg_ctl, "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start"],
                       check=True, capture_output=True, timeout=60)
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mix", password=PASSWORD, dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE search")
        connection.close()
        yield f"postgresql://mix:{PASSWORD}@127.0.0.1:{port}/search"
    finally:
        if data.exists():
            subprocess.run(wrap + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=60)
        shutil.rmtree(home, ignore_errors=True)


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
