"""Take archs away from a study: choosing trials, exported YAML files, ONNX and ``load_model``.

An exported YAML file describes one trained trial completely: the arch, the data configuration
and training recipe it was trained with, the seed, its objective values and test accuracy, and
the file name of its weights (safetensors, beside the YAML). From it, ``load_model`` rebuilds the
trained network; ``retrain`` trains the arch again and checks saved weights.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from .arch import Arch, arch_from_dict
from .artifacts import WEIGHTS_FILE, download, load_weights, require_artifact, trial_artifact_ids
from .errors import MixsearchError, UsageError
from .spec import DIRECTIONS, load_yaml

FORMAT = "mixsearch-export/1"
METRIC_KEYS = ("val_accuracy", "flops", "inference_params", "inference_flops", "latency_ms", "latency_iqr_ms",
               "weight_bytes", "memory_bytes", "epochs_run", "train_seconds")


# -- reading an exported file ------------------------------------------------------------------

@dataclass
class Exported:
    """One exported YAML file, read and checked."""

    path: Path
    data: dict[str, Any]
    arch: Arch

    @property
    def weights(self) -> Path | None:
        name = self.data.get("weights")
        return self.path.parent / name if name else None

    @property
    def seed(self) -> int:
        return int(self.data.get("seed") or 0)


def read_export(path: str | Path) -> Exported:
    """Read an exported YAML file (or a bare arch YAML); every problem is one ``UsageError`` line."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with an arch (an exported YAML file or an arch YAML), "
                         f"got {type(data).__name__ if data is not None else 'an empty file'}")
    if "arch" not in data:
        if "family" not in data:
            raise UsageError(f"{path}: no arch in it; expected an exported YAML file (see mixsearch export) "
                             "or an arch YAML with a family")
        data = {"arch": data}
    arch = arch_from_dict(data["arch"], source=f"{path}: arch")
    return Exported(path, data, arch)


def load_model(path: str | Path) -> nn.Module:
    """The network an exported YAML file describes, with its trained weights when they are beside it.

    Returned in eval mode. A bare arch YAML (or an export without weights) gives a freshly
    initialised network.
    """
    from .models import build_model

    exported = read_export(path)
    model = build_model(exported.arch)
    weights = exported.weights
    if weights is not None:
        if not weights.is_file():
            raise UsageError(f"{exported.path}: weights: {weights} not found (it belongs beside the YAML file)")
        load_weights(model, weights, source=str(weights))
    return model.eval()


# -- choosing trials ---------------------------------------------------------------------------

def _exportable(trial: FrozenTrial) -> bool:
    attrs = trial.user_attrs
    return (trial.state == TrialState.COMPLETE and "duplicate_of" not in attrs
            and "infeasible_reason" not in attrs and bool(attrs.get("curve")))


def sortable_metrics(study: optuna.Study) -> list[str]:
    return list(study.metric_names or []) + ["test_accuracy"]


def metric_value(study: optuna.Study, trial: FrozenTrial, name: str) -> float | None:
    if name == "test_accuracy":
        return trial.user_attrs.get("test_accuracy")
    return trial.values[list(study.metric_names).index(name)]


def select_trials(study: optuna.Study, numbers: list[int] | None = None, top: int | None = None,
                  by: str | None = None) -> list[FrozenTrial]:
    """``numbers``: those trials; ``top``: the best ``top`` by metric ``by``; else the Pareto front."""
    from .study import pareto_trials

    if numbers:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        chosen = []
        for number in numbers:
            trial = trials.get(number)
            if trial is None:
                span = f"trials 0-{max(trials)}" if trials else "no trials"
                raise UsageError(f"--trial {number}: study {study.study_name} has no trial {number} ({span})")
            original = trial.user_attrs.get("duplicate_of")
            if original is not None and original in trials:
                trial = trials[original]  # a duplicate repeats its original, which holds the weights
            if not _exportable(trial):
                raise UsageError(f"--trial {number}: {_why_not(trial)}; only complete trials that trained can be exported")
            if trial not in chosen:
                chosen.append(trial)
        return chosen
    if top is not None:
        names = sortable_metrics(study)
        by = by or names[0]
        if by not in names:
            raise UsageError(f"--by: {by!r} is not a metric of study {study.study_name}; use one of {', '.join(names)}")
        candidates = [t for t in study.get_trials(deepcopy=False) if _exportable(t)
                      and metric_value(study, t, by) is not None]
        maximize = by == "test_accuracy" or DIRECTIONS.get(by) == "maximize"
        candidates.sort(key=lambda t: (-metric_value(study, t, by) if maximize else metric_value(study, t, by), t.number))
        return candidates[:top]
    return [t for t in pareto_trials(study) if _exportable(t)]


def _why_not(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    if trial.state == TrialState.PRUNED:
        return f"trial {trial.number} was pruned ({attrs.get('pruned_reason', 'no reason recorded')})"
    if trial.state != TrialState.COMPLETE:
        return f"trial {trial.number} is {trial.state.name.lower()}"
    if "infeasible_reason" in attrs:
        return f"trial {trial.number} is infeasible ({attrs['infeasible_reason']})"
    return f"trial {trial.number} did not train"


# -- writing exports ---------------------------------------------------------------------------

@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)   # the YAML files, one per trial
    notes: list[str] = field(default_factory=list)    # things the user should know (missing weights...)
    index: list[Path] = field(default_factory=list)


def study_spec(study: optuna.Study):
    """The spec a study recorded when it was created."""
    from .spec import parse_spec

    raw = study.user_attrs.get("spec")
    if raw is None:
        raise MixsearchError(f"study {study.study_name} records no spec; was it made by mixsearch run?")
    return parse_spec(raw, study.user_attrs.get("spec_file", "<study spec>"), default_name=study.study_name)


def plain(value: Any) -> Any:
    """YAML-safe: tuples to lists, numpy/torch scalars to Python numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def latency_measured(study: optuna.Study, attrs: dict[str, Any]) -> dict[str, Any]:
    """The runtime and machine a trial's latency was timed with, as far as the study recorded them
    (none for a trial without a latency): the figure holds on that machine."""
    if attrs.get("latency_ms") is None:
        return {}
    measured = {"runtime": study.user_attrs.get("latency_runtime"),
                "machine": attrs.get("latency_machine") or study.user_attrs.get("latency_machine")}
    return {key: value for key, value in measured.items() if value}


def export_record(study: optuna.Study, trial: FrozenTrial, spec, storage_shown: str) -> dict[str, Any]:
    """What an exported YAML file holds; ``seeds`` (all the trial's seeds, with mean, std and
    per-seed values of each accuracy) only for a trial trained with several seeds."""
    from .seeds import confirm_key, seed_table

    attrs = trial.user_attrs
    objectives = {name: plain_number(v) for name, v in zip(study.metric_names, trial.values)}
    seeds = seed_table(attrs, study.user_attrs.get(confirm_key(trial.number)))
    return plain({
        "format": FORMAT,
        "study": study.study_name,
        "trial": trial.number,
        "storage": storage_shown,
        "summary": attrs.get("arch_summary", ""),
        "seed": attrs.get("seed", spec.study.seed + trial.number),
        "objectives": objectives,
        "test_accuracy": attrs.get("test_accuracy"),
        "metrics": {k: attrs[k] for k in METRIC_KEYS if attrs.get(k) is not None},
        **({"latency_measured": measured} if (measured := latency_measured(study, attrs)) else {}),
        "arch": attrs["arch"],
        "recipe": attrs["recipe"],
        "data": dataclasses.asdict(spec.data),
        "measure": dataclasses.asdict(spec.measure),
        "curve": attrs.get("curve", []),
        **({"seeds": seeds} if seeds else {}),
    })


def write_yaml(path: Path, record: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(record, sort_keys=False, default_flow_style=None, width=100), encoding="utf-8")


def export_trials(study: optuna.Study, trials: list[FrozenTrial], out_dir: str | Path, store,
                  storage_shown: str, onnx: bool = False) -> ExportResult:
    """One YAML per trial (+ weights, + ONNX), then ``index.md`` and ``index.csv``."""
    out = Path(out_dir)
    weights_ids = {trial.number: trial_artifact_ids(study, trial).get(WEIGHTS_FILE) for trial in trials}
    for number, weights_id in weights_ids.items():
        if weights_id is not None:
            require_artifact(store, weights_id, f"trial {number}'s weights")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MixsearchError(f"-o {out}: cannot create it ({exc.strerror})") from None
    spec = study_spec(study)
    result = ExportResult()
    rows = []
    for trial in trials:
        stem = f"trial-{trial.number:03d}"
        record = export_record(study, trial, spec, storage_shown)
        weights_id = weights_ids[trial.number]
        if weights_id is None:
            result.notes.append(f"trial {trial.number}: no weights in the artifact store (the study ran without "
                                "artifacts); exported the arch only")
        else:
            download(store, weights_id, out / f"{stem}.safetensors", f"trial {trial.number}'s weights")
            record["weights"] = f"{stem}.safetensors"
        path = out / f"{stem}.yaml"
        write_yaml(path, record)
        if onnx:
            if weights_id is None:
                result.notes.append(f"trial {trial.number}: no ONNX file without trained weights")
            else:
                difference = export_onnx(load_model(path), out / f"{stem}.onnx", spec.data)
                record["onnx"] = f"{stem}.onnx"
                if difference is not None:
                    record["onnx_max_difference"] = difference
                write_yaml(path, record)
        result.files.append(path)
        rows.append((trial, record, path))
    result.index = write_index(study, rows, out)
    return result


def write_index(study: optuna.Study, rows, out: Path) -> list[Path]:
    names = list(study.metric_names)
    # Mean and std over all the trial's seeds (repeats and confirm); one seed: its value, no std.
    header = ["trial", "file", *names, "test_accuracy", "seeds", "val_acc_mean", "val_acc_std", "test_acc_mean",
              "test_acc_std", "epochs", "weights", "arch"]
    table = []
    for trial, record, path in rows:
        seeds = record.get("seeds") or {}
        spread = []
        for metric, single in (("val_accuracy", record["metrics"].get("val_accuracy")),
                               ("test_accuracy", record.get("test_accuracy"))):
            spread += [seeds[metric]["mean"], seeds[metric]["std"]] if metric in seeds else [single, None]
        table.append([trial.number, path.name, *[record["objectives"][n] for n in names],
                      record.get("test_accuracy"), seeds.get("n", 1), *spread, record["metrics"].get("epochs_run"),
                      record.get("weights") or "", record.get("summary", "")])
    with (out / "index.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(table)
    lines = [f"# Exported trials of study {study.study_name}", "",
             f"{len(rows)} trials; load one with `mixsearch.load_model(\"FILE\")`, retrain it with "
             "`mixsearch train FILE`, check its weights with `mixsearch evaluate FILE`.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table:
        cells = [f"[{c}]({c})" if i == 1 else _cell(c) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "index.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [out / "index.md", out / "index.csv"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def export_onnx(model: nn.Module, path: Path, data_config) -> float | None:
    """Write the inference form of ``model`` as ONNX; with onnxruntime installed, check it against torch.

    Returns the largest absolute difference of the logits (None without onnxruntime).
    """
    import warnings

    from .data import dataset_info
    from .models import inference_model

    input_shape, _ = dataset_info(data_config)
    deployed = inference_model(model).eval()
    example = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(deployed, (example,), str(path), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        except ImportError as exc:
            raise MixsearchError(f"--onnx needs the onnx package ({exc.name or exc}); pip install onnx") from None
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": example.numpy()})
    with torch.inference_mode():
        expected = deployed(example).numpy()
    difference = float(abs(got - expected).max())
    if not math.isfinite(difference) or difference > 1e-3 * max(1.0, float(abs(expected).max())):
        raise MixsearchError(f"{path}: ONNX output differs from torch by {difference:.3g}")
    return difference
