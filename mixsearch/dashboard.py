"""optuna-dashboard on a study's storage, with the study's artifact store.

The dashboard shows every study of the storage: the Pareto front under the metric names,
each trial's user attributes (arch, curve, static metrics), the study-level plots a run stores,
and each trained trial's files (arch YAML, learning curve, weights) for download.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import MixsearchError, UsageError


@dataclass
class DashboardPlan:
    storage: object
    url: str                 # where to open the browser
    artifact_dir: Path
    study_name: str | None


def plan(storage_url: str, study_name: str | None, host: str, port: int,
         artifacts: str | None = None) -> DashboardPlan:
    """Open the storage, find the study (when one is named or the storage holds one) and its store."""
    from .artifacts import artifact_dir
    from .optuna_compat import study_id
    from .storage import load_study, mask_password, open_storage, study_names

    shown = mask_password(storage_url)
    storage = open_storage(storage_url, create=False)
    names = study_names(storage)
    study = None
    if study_name is not None or len(names) == 1:
        study = load_study(storage, study_name, shown)
    directory = artifact_dir(storage_url, study, artifacts, must_exist=True)
    shown_host = f"[{host}]" if ":" in host else host
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown_host}:{port}/dashboard/"
    url = base + (f"studies/{study_id(storage, study.study_name)}" if study is not None else "")
    return DashboardPlan(storage, url, directory, study.study_name if study is not None else None)


def check_port(host: str, port: int) -> None:
    """Fail with one line, before the server starts, when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            raise UsageError(f"--host {host}: unknown host") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MixsearchError(f"--port {port}: already in use on {host}; choose another port") from None
            raise MixsearchError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def serve(dashboard: DashboardPlan, host: str, port: int, announce: Callable[[str], None] = print) -> None:
    """Run optuna-dashboard until interrupted."""
    try:
        import optuna_dashboard
    except ImportError:
        raise MixsearchError("optuna-dashboard is not installed; pip install optuna-dashboard") from None
    from optuna.artifacts import FileSystemArtifactStore

    check_port(host, port)
    store = FileSystemArtifactStore(str(dashboard.artifact_dir)) if dashboard.artifact_dir.is_dir() else None
    announce(dashboard.url)
    optuna_dashboard.run_server(dashboard.storage, host=host, port=port, artifact_store=store)
