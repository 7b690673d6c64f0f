"""Ablation tables from a stored study: groups of arch fields, mean ± std over seeds.

A study's trials are first gathered into *arch runs*: the finished trials of one arch trained with
one recipe (the ``arch_hash`` user attr, which covers both) are repeats of that arch, and each
trial brings one or more seeds: its own (``study.repeats``; layout in ``seeds``) and those
``mixsearch confirm`` added. Trials that reused another trial's result (``duplicate_of``) add no
seed.

Arch runs are then grouped by the values of chosen fields (``FIELDS``: the arch, sharing pattern, bias mode,
patch size, dilation, fusion modes, or any arch or recipe field by name), and each group gets the
mean and sample standard deviation over all its seeds. A group is compared to a named baseline
group with Welch's t-test (unequal variances) on the per-seed test accuracies, two-sided, at
α = 0.05: "differs" only when p < α.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from .arch import arch_from_dict
from .seeds import SEED_SUFFIX, seed_values

# Metrics that vary with the seed; static ones (params, flops) are one value per arch.
SEED_METRICS = ("train_accuracy", "val_accuracy", "test_accuracy", "train_seconds", "latency_ms")

# Columns of the table: user attr -> heading. Columns that no trial of the study has are left out.
METRICS: dict[str, str] = {
    "params": "params",
    "flops": "FLOPs",
    "latency_ms": "latency ms",
    "memory_bytes": "memory B",
    "train_accuracy": "train acc",
    "val_accuracy": "val acc",
    "test_accuracy": "test acc",
    "train_seconds": "train s",
}
TESTED_METRIC = "test_accuracy"
TEST_NAME = "Welch's t-test (two-sided, unequal variances) on per-seed test accuracy"


def _shared_sites(arch: dict) -> list[str]:
    return [site for site, groups in arch.get("sharing", {}).items() if len(set(groups)) < len(groups)]


def sharing_pattern(arch: dict) -> str:
    """Which sites share weights across layers, and how: "none", "all", "token", "channel",
    "fc1", "fc2", or the site names; a site shared in only some layers shows its groups."""
    shared = _shared_sites(arch)
    if not shared:
        return "none"
    partial = [s for s in shared if len(set(arch["sharing"][s])) != 1]
    names = sorted(shared)
    sites = sorted(arch["sharing"])
    for word in ("all", "token", "channel", "fc1", "fc2"):
        members = sorted(s for s in sites if word == "all" or s.startswith(word + ".") or s.endswith("." + word))
        if members == names and not partial:
            return word
    text = ",".join(names)
    if partial:
        text += " " + " ".join(f"{s}={''.join(map(str, arch['sharing'][s]))}" for s in sorted(partial))
    return text


def bias_mode(arch: dict) -> str:
    """"tied" or "separate" when every shared site agrees, "mixed" when not, "-" when nothing is shared."""
    modes = {arch.get("bias", {}).get(site, "tied") for site in _shared_sites(arch)}
    if not modes:
        return "-"
    return modes.pop() if len(modes) == 1 else "mixed"


def fusion_modes(arch: dict) -> str:
    """One letter per MobileNet block: s separable, l linear, F fused."""
    return "".join({"separable": "s", "linear": "l", "fused": "F"}[b["mode"]] for b in arch.get("blocks", []))


# Derived fields; any other name is looked up in the arch dict, then (as ``train.X`` or ``X``) in
# the recipe, then in the trial's user attrs (``label`` for enqueued entries, for instance).
FIELDS: dict[str, Callable[[dict], str]] = {
    "arch": lambda arch: arch_from_dict(arch).describe(),
    "sharing": sharing_pattern,
    "bias": bias_mode,
    "fusion": fusion_modes,
}


@dataclass
class ArchRun:
    """One arch with one recipe: all its finished trials, their seeds pooled."""

    arch_hash: str
    arch: dict
    recipe: dict
    attrs: dict                                   # user attrs of its first trial
    trials: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)   # metric -> one value per seed

    def field_value(self, name: str) -> str:
        if name in FIELDS:
            return FIELDS[name](self.arch)
        key = name.removeprefix("train.")
        for source in (self.arch if not name.startswith("train.") else {}, self.recipe, self.attrs):
            if key in source:
                return _show(source[key])
        raise KeyError(name)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def collect_runs(trials: Iterable[FrozenTrial], confirmations: Mapping[int, Mapping] | None = None) -> list[ArchRun]:
    """Arch runs from a study's trials: complete, trained (not infeasible) and not reused copies.
    ``confirmations`` (trial number -> ``confirm:<number>`` record) adds the seeds of ``confirm``."""
    runs: dict[str, ArchRun] = {}
    confirmations = confirmations or {}
    for trial in trials:
        attrs = trial.user_attrs
        if trial.state != TrialState.COMPLETE or "duplicate_of" in attrs or "infeasible_reason" in attrs:
            continue
        if "arch" not in attrs or TESTED_METRIC not in attrs and TESTED_METRIC + SEED_SUFFIX not in attrs:
            continue
        key = attrs.get("arch_hash", f"trial-{trial.number}")
        run = runs.setdefault(key, ArchRun(key, attrs["arch"], attrs.get("recipe", {}), dict(attrs)))
        run.trials.append(trial.number)
        confirmation = confirmations.get(trial.number)
        seeds = len(seed_values(attrs, TESTED_METRIC, confirmation))
        for metric in METRICS:
            values = seed_values(attrs, metric, confirmation)
            if metric not in SEED_METRICS and values:
                values = values[:1] * seeds  # static: one value per arch, counted once per seed
            run.values.setdefault(metric, []).extend(values)
    return list(runs.values())


@dataclass
class Summary:
    mean: float
    std: float | None     # sample standard deviation; None with a single seed
    n: int


def summarize(values: Sequence[float]) -> Summary | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Summary(statistics.fmean(values), std, len(values))


@dataclass
class Comparison:
    """A group against the baseline group on per-seed test accuracy."""

    delta: float               # group mean minus baseline mean
    p_value: float | None      # None when either side has fewer than 2 seeds or no spread at all
    differs: bool | None       # p < alpha; None when the test cannot be run


def welch_compare(values: Sequence[float], baseline: Sequence[float], alpha: float = 0.05) -> Comparison:
    delta = statistics.fmean(values) - statistics.fmean(baseline)
    if len(values) < 2 or len(baseline) < 2 or statistics.pvariance(values) + statistics.pvariance(baseline) == 0:
        return Comparison(delta, None, None)
    p_value = float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)
    return Comparison(delta, p_value, p_value < alpha)


@dataclass
class Group:
    key: tuple[str, ...]
    runs: list[ArchRun]
    summaries: dict[str, Summary]
    comparison: Comparison | None = None
    is_baseline: bool = False

    @property
    def seeds(self) -> int:
        return self.summaries[TESTED_METRIC].n if TESTED_METRIC in self.summaries else 0


@dataclass
class Report:
    by: tuple[str, ...]
    groups: list[Group]
    metrics: list[str]          # the METRICS columns some group has
    baseline: tuple[str, ...] | None
    alpha: float


def build_report(trials: Iterable[FrozenTrial], by: Sequence[str],
                 baseline: dict[str, Any] | None = None, alpha: float = 0.05,
                 confirmations: Mapping[int, Mapping] | None = None) -> Report:
    """Group ``trials`` (e.g. ``study.get_trials()``) by the fields ``by``; compare each group with
    the group whose field values are ``baseline`` (a mapping field -> value; fields it leaves out
    match anything, and it must match exactly one group). ``confirmations``: see ``collect_runs``."""
    runs = collect_runs(trials, confirmations)
    by = tuple(by)
    grouped: dict[tuple[str, ...], list[ArchRun]] = {}
    for run in runs:
        try:
            key = tuple(run.field_value(name) for name in by)
        except KeyError as exc:
            raise ValueError(f"no field {exc.args[0]!r} in trial {run.trials[0]}'s arch, recipe or attrs") from None
        grouped.setdefault(key, []).append(run)
    groups = []
    for key in sorted(grouped, key=_sort_key):
        members = grouped[key]
        summaries = {}
        for metric in METRICS:
            pooled = [v for run in members for v in run.values.get(metric, [])]
            summary = summarize(pooled)
            if summary is not None:
                summaries[metric] = summary
        groups.append(Group(key, members, summaries))
    base_key = None
    if baseline:
        unknown = [name for name in baseline if name not in by]
        if unknown:
            raise ValueError(f"baseline field {unknown[0]!r} is not one of the grouping fields {', '.join(by)}")
        wanted = {by.index(name): _show(value) for name, value in baseline.items()}
        matches = [g for g in groups if all(g.key[i] == v for i, v in wanted.items())]
        if len(matches) != 1:
            raise ValueError(f"baseline {baseline} matches {len(matches)} groups, not one; groups: "
                             + "; ".join(" ".join(g.key) for g in groups))
        base = matches[0]
        base.is_baseline = True
        base_key = base.key
        base_values = [v for run in base.runs for v in run.values[TESTED_METRIC]]
        for group in groups:
            if group is not base:
                values = [v for run in group.runs for v in run.values[TESTED_METRIC]]
                group.comparison = welch_compare(values, base_values, alpha)
    metrics = [m for m in METRICS if any(m in g.summaries for g in groups)]
    return Report(by, groups, metrics, base_key, alpha)


def _sort_key(key: tuple[str, ...]):
    # Numbers in numeric order (dilation 10 after 9), words alphabetically, "none" first.
    return tuple((0, "") if part in ("none", "-") else (1, float(part)) if _is_number(part) else (2, part)
                 for part in key)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_summary(metric: str, summary: Summary | None) -> str:
    if summary is None:
        return ""
    if metric.endswith("accuracy"):
        fmt = lambda v: f"{v:.4f}"  # noqa: E731  (one point of accuracy is 25 images of 2,500)
    elif metric in ("latency_ms", "train_seconds"):
        fmt = lambda v: f"{v:.3g}"  # noqa: E731
    else:
        fmt = lambda v: f"{v:,.0f}"  # noqa: E731
    if summary.std is None or summary.std == 0 and metric not in SEED_METRICS:
        return fmt(summary.mean)
    return f"{fmt(summary.mean)} ± {fmt(summary.std)}"


def render_markdown(report: Report) -> str:
    """The report as a Markdown table, with a line saying what the spread and the test are."""
    headings = list(report.by) + ["archs", "seeds"] + [METRICS[m] for m in report.metrics]
    if report.baseline is not None:
        headings += ["Δ test acc", f"vs baseline (p < {report.alpha:g})"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for group in report.groups:
        cells = list(group.key) + [str(len(group.runs)), str(group.seeds)]
        cells += [format_summary(m, group.summaries.get(m)) for m in report.metrics]
        if report.baseline is not None:
            cells += _comparison_cells(group)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    note = "mean ± sample standard deviation over seeds (all seeds of all archs in a group)."
    if report.baseline is not None:
        named = ", ".join(f"{name} = {value}" for name, value in zip(report.by, report.baseline))
        note += (f" Baseline: {named}. Test: {TEST_NAME}, α = {report.alpha:g}; "
                 "n/a where a side has fewer than 2 seeds or no spread.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def _comparison_cells(group: Group) -> list[str]:
    if group.is_baseline:
        return ["", "baseline"]
    comparison = group.comparison
    delta = f"{comparison.delta * 100:+.2f} pt"
    if comparison.differs is None:
        return [delta, "n/a"]
    verdict = "differs" if comparison.differs else "within noise"
    return [delta, f"{verdict} (p = {comparison.p_value:.3g})"]
