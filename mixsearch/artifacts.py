"""What a study keeps besides numbers: per-trial files in an artifact store, study-level plots.

Every complete trial that trained uploads three files to the study's Optuna artifact store:
``arch.yaml`` (the arch, loadable with ``mixsearch.load_model``), ``curve.csv`` (one row per
epoch) and ``weights.safetensors`` (the trained weights). optuna-dashboard shows and offers them
for download on the trial's page; ``mixsearch export`` copies the weights next to the exported
YAML.

The store is a directory. For a SQLite or journal file ``DIR/NAME.db`` it is
``DIR/artifacts/NAME/``, so a study and its files travel together; for a database server it is
``studies/artifacts/`` unless ``--artifacts`` says otherwise. The directory a run used is
recorded on the study (user attribute ``artifact_dir``), so later commands find it.

Study-level plots (hypervolume history, learning curves, accuracy against parameters) are stored
with ``optuna_dashboard.save_plotly_graph_object`` and refreshed while the study runs; they show
on the study's page in optuna-dashboard.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from .errors import MixsearchError, UsageError
from .optuna_compat import compute_hypervolume, storage_of
from .seeds import Spread, confirmations, seed_summary
from .storage import journal_path, sqlite_path

ARCH_FILE = "arch.yaml"
CURVE_FILE = "curve.csv"
WEIGHTS_FILE = "weights.safetensors"
CURVE_FIELDS = ("epoch", "train_loss", "val_accuracy", "seconds")
DEFAULT_DIR = Path("studies") / "artifacts"
HV_MARGIN = 0.1  # reference point, beyond the worst normalized value
HV_AXIS = "hypervolume / hypervolume of the final front"
PLOT_IDS = {"hypervolume": "mixsearch-hypervolume", "curves": "mixsearch-learning-curves",
            "tradeoff": "mixsearch-accuracy-vs-params"}

log = logging.getLogger(__name__)


# -- where the store lives ---------------------------------------------------------------------

def default_artifact_dir(storage_url: str) -> Path:
    """``DIR/artifacts/NAME`` beside a SQLite or journal file ``DIR/NAME.*``; else ``studies/artifacts``."""
    file = sqlite_path(storage_url) or journal_path(storage_url)
    if file is not None:
        return file.parent / "artifacts" / file.stem
    return DEFAULT_DIR


def artifact_dir(storage_url: str, study: optuna.Study | None = None, override: str | Path | None = None,
                 must_exist: bool = False) -> Path:
    """The store directory: ``override``, else the one the study recorded (if it exists), else the
    default. With ``must_exist`` (commands that only read the store), an ``override`` that is not a
    directory is a usage error."""
    if override:
        if must_exist and not Path(override).is_dir():
            raise UsageError(f"--artifacts {override}: no such directory")
        return Path(override)
    if study is not None:
        recorded = study.user_attrs.get("artifact_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return default_artifact_dir(storage_url)


def open_artifact_store(directory: Path, create: bool = True) -> FileSystemArtifactStore:
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MixsearchError(f"artifact store {directory}: cannot create it ({exc.strerror})") from None
    return FileSystemArtifactStore(str(directory))


def study_artifact_store(study: optuna.Study, storage_url: str, override: str | Path | None = None,
                         record: bool = False) -> FileSystemArtifactStore:
    """The store of ``study``; with ``record`` (a run), remember its directory on the study."""
    directory = artifact_dir(storage_url, study, override)
    store = open_artifact_store(directory, create=True)
    if record:
        absolute = str(directory.resolve())
        if study.user_attrs.get("artifact_dir") != absolute and (override or "artifact_dir" not in study.user_attrs
                                                                  or not Path(study.user_attrs["artifact_dir"]).is_dir()):
            study.set_user_attr("artifact_dir", absolute)
    return store


# -- per-trial files ---------------------------------------------------------------------------

def save_weights(model: nn.Module, path: str | Path) -> None:
    """safetensors file of ``model``; a Parameter shared by several layers is stored once."""
    from safetensors.torch import save_model

    save_model(model, str(path))


def load_weights(model: nn.Module, path: str | Path, source: str | None = None) -> nn.Module:
    """Load weights written by ``save_weights`` into ``model``; a mismatch is one clear line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    shown = source or str(path)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except FileNotFoundError:
        raise UsageError(f"{shown}: weights file not found") from None
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{shown}: not a safetensors weights file ({_first_line(exc)})") from None
    except RuntimeError as exc:  # shapes that do not fit the arch
        raise UsageError(f"{shown}: the weights do not fit the arch ({_first_line(exc)})") from None
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UsageError(f"{shown}: the weights do not fit the arch ({what}, "
                         f"{len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def curve_csv(curve: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CURVE_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in curve:
        writer.writerow(row)
    return out.getvalue()


def save_trial_artifacts(trial: optuna.Trial, store: FileSystemArtifactStore, arch, model: nn.Module,
                         curve: list[dict[str, Any]]) -> dict[str, str]:
    """Upload arch YAML, learning curve and weights of a trained trial; returns file name → artifact id.

    The ids are also kept in the trial's user attribute ``artifacts``.
    """
    ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mixsearch-") as tmp:
        folder = Path(tmp)
        (folder / ARCH_FILE).write_text(yaml.safe_dump(arch.to_dict(), sort_keys=False), encoding="utf-8")
        (folder / CURVE_FILE).write_text(curve_csv(curve), encoding="utf-8")
        save_weights(model, folder / WEIGHTS_FILE)
        mimetypes = {ARCH_FILE: "application/yaml", CURVE_FILE: "text/csv", WEIGHTS_FILE: "application/octet-stream"}
        for name, mimetype in mimetypes.items():
            ids[name] = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(folder / name),
                                                         study_or_trial=trial, mimetype=mimetype)
    trial.set_user_attr("artifacts", ids)
    return ids


def trial_artifact_ids(study: optuna.Study, trial: FrozenTrial) -> dict[str, str]:
    """File name → artifact id of a trial's uploads (the latest upload of each name wins)."""
    ids = dict(trial.user_attrs.get("artifacts") or {})
    if not ids:
        for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=storage_of(study)):
            ids[meta.filename] = meta.artifact_id
    return ids


def _missing(store: FileSystemArtifactStore, artifact_id: str, what: str) -> MixsearchError:
    return MixsearchError(f"{what}: artifact {artifact_id} is not in the artifact store "
                          f"{getattr(store, '_base_path', '?')}; give the store's directory with --artifacts")


def require_artifact(store: FileSystemArtifactStore, artifact_id: str, what: str) -> None:
    """Raise a one-line error naming ``what`` if ``store`` lacks ``artifact_id``: checked before
    anything is written, so a wrong ``--artifacts`` leaves no half-made output."""
    try:
        with store.open_reader(artifact_id):
            pass
    except ArtifactNotFound:
        raise _missing(store, artifact_id, what) from None


def download(store: FileSystemArtifactStore, artifact_id: str, path: Path, what: str) -> None:
    """Copy an artifact to ``path``, replacing an older copy (exporting again refreshes the files);
    ``what`` names it in the error when the store lacks it."""
    import shutil

    partial = path.with_name(path.name + ".partial")
    try:
        with store.open_reader(artifact_id) as reader, partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer)
        partial.replace(path)
    except ArtifactNotFound:
        partial.unlink(missing_ok=True)
        raise _missing(store, artifact_id, what) from None


# -- study-level plots -------------------------------------------------------------------------

def _trained(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.user_attrs.get("curve") and "duplicate_of" not in t.user_attrs]


def _group(trial: FrozenTrial) -> str:
    arch = trial.user_attrs.get("arch") or {}
    if arch.get("family") == "mixer":
        return f"mixer P{arch.get('patch_size')} d{arch.get('dilation')}"
    return str(arch.get("family", "?"))


def hypervolume_figure(study: optuna.Study):
    import plotly.graph_objects as go

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values and "infeasible_reason" not in t.user_attrs]
    figure = go.Figure(layout={"title": "Hypervolume of the Pareto front by trial",
                               "xaxis": {"title": "trial"}, "yaxis": {"title": HV_AXIS, "range": [0, 1.02]}})
    if not complete:
        return figure
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    # Normalize every objective to [0, 1] (1 best) over the complete trials, so that objectives of
    # different units weigh alike; the reference point lies a little beyond the worst, so a trial
    # that is worst in one objective still adds volume.
    columns = list(zip(*(t.values for t in complete)))
    lows, highs = [min(c) for c in columns], [max(c) for c in columns]

    def scaled(values):
        out = []
        for value, low, high, up in zip(values, lows, highs, maximize):
            unit = (value - low) / (high - low) if high > low else 1.0
            out.append(-(unit if up else 1.0 - unit))  # hypervolume of a minimization
        return out

    import numpy as np

    reference = np.full(len(maximize), HV_MARGIN)
    ordered = sorted(complete, key=lambda t: t.number)
    points = np.asarray([scaled(trial.values) for trial in ordered])
    # Divided by the hypervolume of all complete trials (the final front), the curve rises to
    # exactly 1 and never leaves [0, 1]: read it as "share of the final front's volume reached".
    # The final volume is > 0: every point lies at least HV_MARGIN inside the reference point.
    final = compute_hypervolume(points, reference)
    xs = [trial.number for trial in ordered]
    # min(): a subset's volume never exceeds the whole one's; only rounding could say otherwise.
    ys = [min(1.0, compute_hypervolume(points[: i + 1], reference) / final) for i in range(len(ordered))]
    figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name="hypervolume"))
    return figure


def curves_figure(study: optuna.Study):
    import plotly.graph_objects as go

    figure = go.Figure(layout={"title": "Learning curves (validation accuracy by epoch)",
                               "xaxis": {"title": "epoch"}, "yaxis": {"title": "validation accuracy"}})
    for trial in _trained(study):
        curve = trial.user_attrs["curve"]
        pruned = trial.state == TrialState.PRUNED
        figure.add_trace(go.Scatter(
            x=[e["epoch"] for e in curve], y=[e["val_accuracy"] for e in curve], mode="lines+markers",
            name=f"trial {trial.number}" + (" (pruned)" if pruned else ""),
            line={"dash": "dot"} if pruned else None, opacity=0.5 if pruned else 1.0,
            hovertext=trial.user_attrs.get("arch_summary", "")))
    return figure


def tradeoff_figure(study: optuna.Study):
    import plotly.graph_objects as go

    figure = go.Figure(layout={"title": "Validation accuracy against parameters",
                               "xaxis": {"title": "parameters", "type": "log"},
                               "yaxis": {"title": "validation accuracy (mean ± std over seeds)"},
                               "legend": {"title": "family / patch"}})
    groups: dict[str, list[FrozenTrial]] = {}
    for trial in _trained(study):
        if trial.state == TrialState.COMPLETE and trial.user_attrs.get("params") is not None:
            groups.setdefault(_group(trial), []).append(trial)
    confirmed = confirmations(study.user_attrs)
    for name in sorted(groups):
        trials = groups[name]
        # Mean ± std over each trial's seeds (repeats and confirm); one seed: its value, no bar.
        spreads = [seed_summary(t.user_attrs, "val_accuracy", confirmed.get(t.number))
                   or Spread(t.user_attrs["curve"][-1]["val_accuracy"], None, 1) for t in trials]
        figure.add_trace(go.Scatter(
            x=[t.user_attrs["params"] for t in trials], y=[s.mean for s in spreads],
            error_y={"type": "data", "array": [s.std or 0.0 for s in spreads], "visible": True},
            mode="markers", name=name, marker={"size": 9},
            hovertext=[f"trial {t.number}: {t.user_attrs.get('arch_summary', '')} ({s.n} seeds)"
                       for t, s in zip(trials, spreads)]))
    return figure


def refresh_plots(study: optuna.Study) -> None:
    """Store the study-level plots for optuna-dashboard; a plotting problem never stops a study."""
    try:
        from optuna_dashboard import save_plotly_graph_object
    except ImportError:
        return
    try:
        for key, make in (("hypervolume", hypervolume_figure), ("curves", curves_figure),
                          ("tradeoff", tradeoff_figure)):
            save_plotly_graph_object(study, make(study), graph_object_id=PLOT_IDS[key])
    except ImportError:  # plotly missing: the dashboard still works, without these plots
        return
    except Exception as exc:  # noqa: BLE001 - plots are a convenience, the search goes on
        log.warning("could not refresh the study plots: %s", _first_line(exc))


# The study plots may take at most this share of a run's time.
PLOT_TIME_SHARE = 0.02


class PlotRefresher:
    """Refreshes the study plots after a trial when it is worth it.

    The first time, then once the time since the last refresh is at least that refresh's cost
    divided by ``PLOT_TIME_SHARE``: a plot holds every trial, so a refresh costs more as the study
    grows, and with short trials a refresh after each one would take a good part of the run.
    """

    def __init__(self) -> None:
        self.last_end: float | None = None
        self.cost = 0.0

    def after_trial(self, study: optuna.Study) -> None:
        now = time.perf_counter()
        if self.last_end is not None and now - self.last_end < self.cost / PLOT_TIME_SHARE:
            return
        refresh_plots(study)
        self.last_end = time.perf_counter()
        self.cost = self.last_end - now
