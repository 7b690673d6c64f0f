"""A throw-away PostgreSQL server for the tests and the chaos benchmark.

initdb into a scratch directory, loopback only, a free port, fsync off; removed on exit.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` (or
``nobody``) user. ``Unavailable`` says why no server can be started here (the tests skip).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/14/bin")
PASSWORD = "s3cr3t-pw"


class Unavailable(Exception):
    """No PostgreSQL server can be started on this machine (the message says why)."""


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
    raise Unavailable("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = "search", max_connections: int = 50):
    """Yield ``postgresql://mix:PASSWORD@127.0.0.1:PORT/<database>`` of a fresh server; stop it after."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    try:
        import psycopg2
    except ImportError:
        raise Unavailable("the psycopg2 driver is not installed") from None
    user = _server_user()
    # Not under a private temp dir (pytest's tmp_path is root's only): the server user must enter.
    home = Path(tempfile.mkdtemp(prefix="mixsearch-pg-"))
    data = home / "data"
    (home / "pw").write_text(PASSWORD)
    wrap = ["runuser", "-u", user, "--"] if user else []
    if user:
        record = pwd.getpwnam(user)
        for path in (home, home / "pw"):
            os.chown(path, record.pw_uid, record.pw_gid)
    port = free_port()
    try:
        subprocess.run(wrap + [initdb, "-D", str(data), "-U", "mix", f"--pwfile={home / 'pw'}",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
                       check=True, capture_output=True, timeout=60)
        options = (f"-k {home} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c max_connections={max_connections}")
        subprocess.run(wrap + [pg_ctl, "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start"],
                       check=True, capture_output=True, timeout=60)
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mix", password=PASSWORD, dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute(f"CREATE DATABASE {database}")
        connection.close()
        yield f"postgresql://mix:{PASSWORD}@127.0.0.1:{port}/{database}"
    finally:
        if data.exists():
            subprocess.run(wrap + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=60)
        shutil.rmtree(home, ignore_errors=True)
