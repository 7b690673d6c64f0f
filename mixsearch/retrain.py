"""Retrain an exported arch from scratch, and evaluate an exported file's weights.

``retrain`` trains the arch of an exported YAML file again with its recorded recipe and data (the
trial's seed repeats its numbers exactly on CPU) and writes a new exported file beside its
weights; ``evaluate_export`` checks saved weights on the recorded test split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import save_weights
from .errors import MixsearchError, UsageError
from .export import FORMAT, Exported, load_model, plain, plain_number, read_export, write_yaml


def _section(exported: Exported, key: str, build, **overrides):
    """``build(**section)`` from the exported file's ``key`` section, with the given overrides
    that are not None; a key the class does not take is a usage error naming the file."""
    values = dict(exported.data.get(key) or {})
    values.update({name: value for name, value in overrides.items() if value is not None})
    try:
        return build(**values)
    except TypeError as exc:
        raise UsageError(f"{exported.path}: {key}: {exc}") from None


def _data_config(exported: Exported, source: str | None = None, train_size: int | None = None):
    from .data import DataConfig

    if not exported.data.get("data"):
        raise UsageError(f"{exported.path}: no data section; only an exported YAML file records the data it was "
                         "trained on (see mixsearch export)")
    return _section(exported, "data", DataConfig, source=source, train_size=train_size)


def _recipe(exported: Exported, epochs: int | None = None):
    from .train import TrainRecipe

    return _section(exported, "recipe", TrainRecipe, epochs=epochs)


@dataclass
class RetrainResult:
    path: Path                 # the retrained YAML
    record: dict[str, Any]


def retrain(path: str | Path, out_dir: str | Path = "retrained", epochs: int | None = None,
            data_source: str | None = None, train_size: int | None = None, seed: int | None = None,
            on_epoch=None) -> RetrainResult:
    """Train the arch of an exported file from scratch with its recipe and data (overrides applied).

    The trial's own seed, data and recipe repeat its validation and test accuracy exactly on CPU
    (with the same number of torch threads). Writes ``OUT/<name>.yaml`` and its weights.
    """
    from .data import load_splits
    from .measure import STATIC_ATTRS, MeasureConfig, finish_static, start_static
    from .models import build_model
    from .train import evaluate, resolve_device, train
    from .trial import epoch_dict

    exported = read_export(path)
    recipe = _recipe(exported, epochs)
    data = _data_config(exported, data_source, train_size)
    seed = exported.seed if seed is None else seed
    measure = MeasureConfig(**(exported.data.get("measure") or {}))
    device = resolve_device(recipe.device)
    splits = load_splits(data, device=device)
    if tuple(splits.input_shape) != (exported.arch.in_channels, *exported.arch.image_size):
        raise UsageError(f"{exported.path}: the arch takes {exported.arch.in_channels}x"
                         f"{'x'.join(map(str, exported.arch.image_size))} images, the data gives "
                         f"{'x'.join(map(str, splits.input_shape))}")
    out = Path(out_dir)
    target = out / f"{exported.path.stem}.yaml"
    if target.resolve() == exported.path.resolve():
        raise UsageError(f"-o {out}: would overwrite {exported.path}; choose another directory")
    # The same order of random draws as a study trial: seed, build, measure, train; and, as there,
    # the latency's second half after training.
    torch.manual_seed(seed)
    model = build_model(exported.arch)
    static, split = start_static(exported.arch, model, splits.input_shape, measure)
    model.to(device)
    result = train(model, splits, recipe, seed=seed, on_epoch=on_epoch)
    static = finish_static(static, split)
    test_accuracy = evaluate(model, splits.test_x, splits.test_y)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MixsearchError(f"-o {out}: cannot create it ({exc.strerror})") from None
    stem = exported.path.stem
    values = {"accuracy": result.val_accuracy, **{name: static.objective(name) for name in STATIC_ATTRS}}
    names = list((exported.data.get("objectives") or {}).keys()) or ["accuracy", "params", "flops", "latency"]
    curve = [epoch_dict(e) for e in result.curve]
    record = {key: value for key, value in exported.data.items() if key not in ("weights", "onnx", "onnx_max_difference")}
    record.update(plain({
        "format": FORMAT,
        "retrained_from": str(exported.path),
        "seed": seed,
        "objectives": {n: plain_number(values[n]) for n in names if n in values},
        "test_accuracy": test_accuracy,
        "metrics": {"val_accuracy": result.val_accuracy, **{k: v for k, v in static.to_dict().items() if v is not None},
                    "epochs_run": result.epochs_run, "train_seconds": round(result.train_seconds, 3)},
        "arch": exported.arch.to_dict(),
        "recipe": recipe.to_dict(),
        "data": dataclasses.asdict(data),
        "measure": dataclasses.asdict(measure),
        "curve": curve,
    }))
    record["weights"] = f"{stem}.safetensors"
    save_weights(model.cpu(), out / record["weights"])
    write_yaml(target, record)
    return RetrainResult(target, record)


def evaluate_export(path: str | Path, data_source: str | None = None) -> dict[str, Any]:
    """Accuracy of the saved weights on the recorded test (and validation) split."""
    from .data import load_splits
    from .train import evaluate, resolve_device

    exported = read_export(path)
    if exported.weights is None:
        raise UsageError(f"{exported.path}: no weights recorded; only an export with weights can be evaluated")
    data = _data_config(exported, data_source)
    device = resolve_device(_recipe(exported).device)
    model = load_model(path).to(device)
    splits = load_splits(data, device=device)
    return {"test_accuracy": evaluate(model, splits.test_x, splits.test_y),
            "val_accuracy": evaluate(model, splits.val_x, splits.val_y),
            "recorded_test_accuracy": exported.data.get("test_accuracy"),
            "recorded_val_accuracy": (exported.data.get("metrics") or {}).get("val_accuracy"),
            "test_size": len(splits.test_y), "source": splits.source}
