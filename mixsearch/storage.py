"""Where studies live: storage URLs, opening them, and finding a study in them.

Any Optuna storage URL works. The default is ``sqlite:///studies/<study name>.db``. A path to a
``.db`` file is read as SQLite and a path to a ``.log``/``.jsonl`` file as an Optuna journal.
RDB storages get a heartbeat so that a worker that dies mid-trial leaves a FAIL, not a RUNNING
trial forever.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

from .errors import MixsearchError, UsageError


@contextlib.contextmanager
def quiet_experimental():
    """Silence Optuna's ExperimentalWarning around features we rely on knowingly (heartbeats,
    metric names): they are stable for our use, and the warning says nothing to a user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return max(1, int(text)) if text else default
    except ValueError:
        raise UsageError(f"environment variable {name}: expected whole seconds, got {text!r}") from None


# A live worker writes a heartbeat every HEARTBEAT_SECONDS; a RUNNING trial without one for
# GRACE_SECONDS is failed (and retried) by the next worker that starts a trial.
# Tests shorten both with MIXSEARCH_HEARTBEAT_INTERVAL and MIXSEARCH_HEARTBEAT_GRACE.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")


# What flock raises on a file system that does not support it.
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class JournalFlock:
    """The lock around a journal's appends: an OS lock (``flock``) on the journal file itself.
    ``JournalFileBackend`` takes it as its ``lock_obj`` (it calls ``acquire`` and ``release``).

    Optuna's own journal locks are lock files beside the journal, and with several workers two
    things about them hurt: a worker that dies holding one (killed, out of memory) stalls every
    other worker for a 30-s grace period; and a Ctrl-C that lands while a worker waits for one
    removes the lock of the worker that holds it (their acquire releases on any exception), so that
    two may append at once. The OS drops a flock when its holder's file is closed or the holder
    dies, and an interrupted wait holds nothing. Readers never lock; every mixsearch command opens
    journals with this lock (``optuna-dashboard`` too, through ``mixsearch dashboard``). On a file
    system without flock it falls back to Optuna's lock file.
    """

    def __init__(self, journal: str):
        self._journal = journal
        self._fd: int | None = None
        self._fallback: JournalFileSymlinkLock | None = None  # where the file system has no flock

    def acquire(self) -> bool:
        if self._fallback is not None:
            return self._fallback.acquire()
        fd = os.open(self._journal, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in NO_FLOCK:
                raise
            self._fallback = JournalFileSymlinkLock(self._journal)  # some FUSE and network file systems
            return self._fallback.acquire()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the only descriptor of this open file: closing it drops the flock


def default_storage_url(study_name: str, directory: str | Path = "studies") -> str:
    return f"sqlite:///{Path(directory) / (study_name + '.db')}"


def mask_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``; never print a password."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def normalize_url(target: str) -> str:
    """Accept a storage URL or a path to a SQLite or journal file."""
    if "://" in target or target.startswith("journal:"):
        return target
    path = Path(target)
    if path.suffix in JOURNAL_SUFFIXES:
        return f"journal:{path}"
    return f"sqlite:///{path}"


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def open_storage(url: str, create: bool = True) -> optuna.storages.BaseStorage:
    """Open ``url`` as an Optuna storage, with one clear line when that is impossible.

    With ``create=False`` a file-backed storage must already exist, so reading commands never
    leave an empty database behind a typo.
    """
    shown = mask_password(url)
    interval = env_seconds("MIXSEARCH_HEARTBEAT_INTERVAL", HEARTBEAT_SECONDS)
    grace = env_seconds("MIXSEARCH_HEARTBEAT_GRACE", GRACE_SECONDS)
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not create and not path.is_file():
            raise UsageError(f"storage {shown}: no such journal file")
        _check_parent(path, shown, create)
        try:
            return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFlock(str(path))))
        except Exception as exc:  # Optuna replays the whole file: garbage fails in many ways
            raise MixsearchError(f"storage {shown}: {path} is not a readable Optuna journal (corrupted or another "
                                 f"kind of file: {exc.__class__.__name__})") from None
    file = sqlite_path(url)
    if file is not None:
        if not create and not file.is_file():
            raise UsageError(f"storage {shown}: no such SQLite file")
        _check_parent(file, shown, create)
        if file.is_file() and not _looks_like_sqlite(file):
            raise MixsearchError(f"storage {shown}: {file} is not a SQLite database (corrupted or another kind of file)")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        raise UsageError(f"storage {shown}: not a storage URL; use sqlite:///PATH.db, postgresql://..., "
                         "mysql://... or journal:PATH")
    url = _with_driver(url)
    try:
        for attempt in range(5):
            try:
                with quiet_experimental():
                    return RDBStorage(url, heartbeat_interval=interval, grace_period=max(grace, interval),
                                      engine_kwargs=_engine_kwargs(url))
            except Exception as exc:  # workers starting together race to create the tables
                if attempt == 4 or not any(s in str(exc) for s in ("already exists", "UniqueViolation", "Duplicate")):
                    raise
                time.sleep(0.5 + attempt)
    except ImportError as exc:
        raise UsageError(f"storage {shown}: the database driver is not installed ({exc.name or exc})") from None
    except Exception as exc:  # SQLAlchemy raises many kinds: bad URL, refused connection, bad schema
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise MixsearchError(f"storage {shown}: cannot open it ({mask_password(reason)})") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only that one is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _engine_kwargs(url: str) -> dict:
    # SQLite: wait for a busy database instead of failing at once when another process writes.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}


def _looks_like_sqlite(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True
    with path.open("rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def _check_parent(path: Path, shown: str, create: bool) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if create:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MixsearchError(f"storage {shown}: cannot create directory {parent} ({exc.strerror})") from None
    if parent.exists() and not os.access(parent, os.W_OK):
        raise MixsearchError(f"storage {shown}: directory {parent} is not writable")


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(storage: optuna.storages.BaseStorage, name: str | None, shown_url: str) -> optuna.Study:
    """Load ``name``, or the only study of the storage when no name is given."""
    names = study_names(storage)
    if name is None:
        if len(names) == 1:
            name = names[0]
        elif not names:
            raise UsageError(f"storage {shown_url}: holds no study yet")
        else:
            raise UsageError(f"storage {shown_url}: holds several studies ({', '.join(names)}); choose one with --study")
    elif name not in names:
        raise UsageError(f"--study: no study named {name!r} in {shown_url}; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def journal_path(url: str) -> Path | None:
    return Path(url[len("journal:"):]) if url.startswith("journal:") else None


def default_run_storage(study_name: str, jobs: int = 1, directory: str | Path = "studies") -> tuple[str, str | None]:
    """The storage a run uses when neither the command line nor the spec names one.

    One process: SQLite. Several processes on this machine: an Optuna journal file, because
    SQLite serializes every write and Optuna advises against it for parallel work. A study that
    already exists in one of the two stays there. Returns the URL and a note for the user.
    """
    sqlite_url = default_storage_url(study_name, directory)
    journal = Path(directory) / (study_name + ".log")
    sqlite_file = sqlite_path(sqlite_url)
    if journal.is_file() and not sqlite_file.is_file():
        return f"journal:{journal}", None
    if jobs > 1 and not sqlite_file.is_file():
        return f"journal:{journal}", f"{jobs} workers share the study through the journal file {journal}"
    if jobs > 1:
        return sqlite_url, f"{sqlite_file} exists, so its workers share SQLite (writes wait for each other)"
    return sqlite_url, None


class TrialSlotLock:
    """Held from "are more trials needed?" until the new trial is RUNNING.

    With it, workers never start more trials than the study asks for. Files (SQLite, journal)
    lock their directory with flock, PostgreSQL and MySQL take a named database lock; other
    storages run without one and may overshoot by a trial when workers finish together.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, url: str, study_name: str):
        from .optuna_compat import unwrap_storage

        # A study's own storage is Optuna's cache around the RDB storage: the lock needs the latter.
        self.storage = unwrap_storage(storage)
        self.url = url
        self.key = study_name
        self._release = None

    def acquire(self) -> None:
        if self._release is not None:
            return
        path = sqlite_path(self.url) or journal_path(self.url)
        if path is not None:
            fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)

            def release() -> None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            self._release = release
        elif isinstance(self.storage, RDBStorage) and self.url.startswith(("postgresql", "mysql")):
            from sqlalchemy import text

            connection = self.storage.engine.connect()
            if self.url.startswith("postgresql"):
                connection.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": "mixsearch:" + self.key})
                unlock = text("SELECT pg_advisory_unlock(hashtext(:k))")
            else:
                connection.execute(text("SELECT GET_LOCK(:k, -1)"), {"k": "mixsearch:" + self.key})
                unlock = text("SELECT RELEASE_LOCK(:k)")

            def release() -> None:
                with contextlib.suppress(Exception):
                    connection.execute(unlock, {"k": "mixsearch:" + self.key})
                connection.close()
            self._release = release
        else:
            self._release = lambda: None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def run_storage(given: str | None, study_name: str, jobs: int = 1) -> tuple[str, str | None]:
    """The storage URL a run uses, and a note on why when it is a default (see default_run_storage)."""
    if given:
        # A file path is fine when its suffix says what it is; anything else must be a URL.
        if Path(given).suffix in (".db", ".sqlite", ".sqlite3", *JOURNAL_SUFFIXES):
            given = normalize_url(given)
        return given, None
    return default_run_storage(study_name, jobs)


def resolve_target(target: str, study_name: str | None) -> tuple[str, str | None]:
    """(storage URL, study name) of a command's target: a spec file names both; anything else
    is a storage URL or file."""
    if target.endswith((".yaml", ".yml")):
        from .spec import load_spec

        spec = load_spec(target)
        return spec.study.storage or default_run_storage(spec.study.name)[0], study_name or spec.study.name
    if "://" not in target and not target.startswith("journal:") and not Path(target).exists():
        raise UsageError(f"{target}: no such file; give a spec YAML, a .db file or a storage URL")
    return normalize_url(target), study_name
