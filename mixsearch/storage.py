"""Where studies live: storage URLs, opening them, and finding a study in them.

Any Optuna storage URL works. The default is ``sqlite:///studies/<study name>.db``. A path to a
``.db`` file is read as SQLite and a path to a ``.log``/``.jsonl`` file as an Optuna journal.
RDB storages get a heartbeat so that a worker that dies mid-trial leaves a FAIL, not a RUNNING
trial forever.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from .errors import MixsearchError, UsageError

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")


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
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not create and not path.is_file():
            raise UsageError(f"storage {shown}: no such journal file")
        _check_parent(path, shown, create)
        return JournalStorage(JournalFileBackend(str(path)))
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
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                          engine_kwargs=_engine_kwargs(url))
    except ImportError as exc:
        raise UsageError(f"storage {shown}: the database driver is not installed ({exc.name or exc})") from None
    except Exception as exc:  # SQLAlchemy raises many kinds: bad URL, refused connection, bad schema
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise MixsearchError(f"storage {shown}: cannot open it ({mask_password(reason)})") from None


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
