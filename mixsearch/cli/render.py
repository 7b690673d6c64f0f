"""Everything the commands print: number formats, per-trial lines and tables, in one place.

Formats: params and FLOPs as integers with thousands separators (``13,920``), latency in ms with
three significant digits (``1.23 ms``), accuracy with four decimals (``0.9123``). Tables are
meant to read whole in a terminal 100 columns wide.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def format_count(value: float) -> str:
    return f"{int(value):,}"


def format_ms(value: float) -> str:
    """Three significant digits, never in exponent form: 0.0123, 1.23, 12.3, 123, 1,234."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} ms"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f} ms"


def format_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_bytes(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**10:,.1f} KiB"


def format_value(name: str, value: float) -> str:
    """An objective's value in its unit: accuracy, latency (ms), memory (KiB), or a count."""
    if name == "accuracy":
        return format_accuracy(value)
    if name == "latency":
        return format_ms(value)
    if name == "memory":
        return format_bytes(value)
    return format_count(value)


def arch_summary(trial) -> str:
    """The arch's one-line summary, rebuilt from the stored arch so older studies read the same."""
    from ..arch import arch_from_dict
    from ..errors import ArchError

    try:
        return arch_from_dict(trial.user_attrs["arch"]).describe()
    except (KeyError, ArchError):
        return trial.user_attrs.get("arch_summary", "")


def trial_note(trial) -> str:
    attrs = trial.user_attrs
    for key, label in (("duplicate_of", "duplicate of trial"), ("infeasible_reason", "infeasible:"),
                       ("pruned_reason", "pruned:")):
        if key in attrs:
            return f"{label} {attrs[key]}"
    return arch_summary(trial) if "arch" in attrs else ""


def trial_line(trial, objectives: list[str]) -> str:
    """``trial   3 complete 0.9123, 13,920  mixer L2 C16 ...``: one finished trial."""
    values = ", ".join(format_value(n, v) for n, v in zip(objectives, trial.values)) if trial.values else "-"
    return f"trial {trial.number:>3} {trial.state.name.lower():<8} {values}  {trial_note(trial)}"


def format_spread(mean: float, std: float | None) -> str:
    """An accuracy over seeds: ``0.9612 ± 0.0044`` (no ± with one seed)."""
    return format_accuracy(mean) if std is None else f"{mean:.4f} ± {std:.4f}"


def print_front(study, shown_url: str) -> None:
    """The Pareto front table, the trial counts and where to go next. A trial trained with
    several seeds (repeats, confirm) shows mean ± std of its validation and test accuracy."""
    from ..seeds import confirmations, seed_table
    from ..study import pareto_trials, state_counts

    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    front = pareto_trials(study)
    confirmed = confirmations(study.user_attrs)
    table = Table(title=f"Pareto front of {study.study_name} ({len(front)} trials)")
    table.add_column("trial", justify="right")
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("test acc", justify="right", no_wrap=True)
    table.add_column("seeds", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("arch", ratio=1)
    spread_shown = False
    for trial in front:
        seeds = seed_table(trial.user_attrs, confirmed.get(trial.number))
        cells = [format_value(n, v) for n, v in zip(names, trial.values)]
        test = format_accuracy(trial.user_attrs.get("test_accuracy"))
        if seeds is not None:
            spread_shown = True
            if "accuracy" in names and "val_accuracy" in seeds:
                cells[names.index("accuracy")] = format_spread(seeds["val_accuracy"]["mean"], seeds["val_accuracy"]["std"])
            if "test_accuracy" in seeds:
                test = format_spread(seeds["test_accuracy"]["mean"], seeds["test_accuracy"]["std"])
        table.add_row(str(trial.number), *cells, test, str(seeds["n"] if seeds else 1),
                      str(trial.user_attrs.get("epochs_run", "-")), arch_summary(trial))
    console.print(table)
    if spread_shown:
        console.print("accuracy and test acc: mean ± sample std over the trial's seeds (repeats and confirm)",
                      highlight=False)
    counts = state_counts(study)
    console.print("trials: " + (", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"),
                  highlight=False)
    provenance = latency_provenance(study)
    if provenance:
        console.print(provenance, highlight=False)
    target = shown_url[len("sqlite:///"):] if shown_url.startswith("sqlite:///") else shown_url
    console.print(f"browse it: mixsearch dashboard {target} --study {study.study_name}", highlight=False)
    console.print(f"take archs away: mixsearch export {target} --study {study.study_name}", highlight=False)


def latency_provenance(study) -> str | None:
    """Where the study's latencies were timed: runtime, machine and the trials timed elsewhere."""
    attrs = study.user_attrs
    if "latency_runtime" not in attrs:
        return None
    line = f"latency: {attrs['latency_runtime']}"
    if attrs.get("latency_machine"):
        line += f" on {attrs['latency_machine']}"
    elsewhere = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("latency_machine")]
    if elsewhere:
        more = f" and {len(elsewhere) - 10} more" if len(elsewhere) > 10 else ""
        line += (f"; timed on another machine (latency_machine): trial{'s' if len(elsewhere) > 1 else ''} "
                 + ", ".join(map(str, elsewhere[:10])) + more)
    return line


def print_spec_check(spec, check) -> None:
    """``validate``: the corner archs table, the space size and the verdict line."""
    table = Table(title=f"{spec.source}: archs at the extremes of each choice")
    for column in ("arch", "params", "FLOPs", "memory", "set by"):
        table.add_column(column, justify="right" if column in ("params", "FLOPs", "memory") else "left")
    for corner in check.corners:
        if corner.summary is None:
            table.add_row(f"[red]impossible: {corner.error}[/]", "-", "-", "-", corner.label)
        else:
            table.add_row(corner.summary, format_count(corner.params), format_count(corner.flops),
                          format_bytes(corner.memory), corner.label)
    console.print(table)
    console.print(f"family {spec.space.family}; objectives {', '.join(spec.objectives)}; sampler {spec.study.sampler}; "
                  f"pruner {spec.study.pruner}", highlight=False)
    console.print(f"latency: timed in {spec.measure.runtime} for every trial" if spec.times_latency else
                  "latency: not timed: not an objective or constraint (measure.latency: always)",
                  highlight=False)
    console.print("space size: " + (f"{check.size:,} configurations" if check.size is not None
                                    else "continuous (infinite)"), highlight=False)


def print_exported(study, trials, result, out) -> None:
    """``export``: one row per written file, then where the index is and how to load one."""
    table = Table(title=f"exported {len(result.files)} trials of {study.study_name} to {out}")
    for column in ("trial", *study.metric_names, "test acc", "file"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for trial, path in zip(trials, result.files):
        table.add_row(str(trial.number), *[format_value(n, v) for n, v in zip(study.metric_names, trial.values)],
                      format_accuracy(trial.user_attrs.get("test_accuracy")), path.name)
    console.print(table)
    console.print(f"index: {out / 'index.md'}; load one with mixsearch.load_model(\"{result.files[0]}\")",
                  highlight=False)


def print_confirmed(study, done) -> None:
    """``confirm``: per trial, its seeds in all and mean ± std of validation and test accuracy."""
    table = Table(title=f"confirmed {len(done)} Pareto-optimal trials of {study.study_name}")
    for column in ("trial", "new seeds", "seeds", "val acc", "test acc", "arch"):
        table.add_column(column, justify="left" if column == "arch" else "right")
    for item in done:
        record = item.record
        table.add_row(str(item.trial.number), str(len(item.new_seeds)), str(record["n"]),
                      format_spread(record["val_accuracy"], record.get("val_accuracy_std")),
                      format_spread(record["test_accuracy"], record.get("test_accuracy_std")), arch_summary(item.trial))
    console.print(table)
    console.print("mean ± sample std over all the trial's seeds (its own and confirm's); "
                  "stored as study user attrs confirm:<trial>; see mixsearch show / report", highlight=False)


def print_report(study, markdown: str, output: str | None) -> None:
    """``report``: the Markdown table as it is written (it reads as text in a terminal too)."""
    console.print(f"study {study.study_name}", highlight=False)
    console.print(markdown, highlight=False, markup=False, soft_wrap=True)
    if output:
        console.print(f"wrote {output}", highlight=False)


def print_retrained(done) -> None:
    record, metrics = done.record, done.record["metrics"]
    console.print(f"{record.get('summary') or ''}".strip() or record["arch"]["family"], highlight=False)
    console.print(f"test accuracy {format_accuracy(record['test_accuracy'])}, val accuracy "
                  f"{format_accuracy(metrics['val_accuracy'])}, params {format_count(metrics['params'])}, "
                  f"FLOPs {format_count(metrics['flops'])}, latency {format_ms(metrics['latency_ms'])} "
                  f"(seed {record['seed']})", highlight=False)
    console.print(f"wrote {done.path} and {done.path.parent / record['weights']}", highlight=False)


def print_epoch(result) -> None:
    console.print(f"epoch {result.epoch}: train loss {result.train_loss:.4f}, "
                  f"val acc {format_accuracy(result.val_accuracy)}", highlight=False)


def print_evaluation(result) -> None:
    recorded = result["recorded_test_accuracy"]
    line = (f"test accuracy {format_accuracy(result['test_accuracy'])} on {result['test_size']} images "
            f"of {result['source']}")
    if recorded is not None:
        line += f" (recorded {format_accuracy(recorded)})"
    console.print(line, highlight=False)
    console.print(f"val accuracy {format_accuracy(result['val_accuracy'])}", highlight=False)


def print_error(message: str) -> None:
    from rich.markup import escape  # messages quote values like [1, 28]: not markup

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_note(message: str) -> None:
    err_console.print(message, highlight=False)
