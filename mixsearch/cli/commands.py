"""``validate``, ``show``, ``dashboard``, ``export``, ``train``, ``evaluate``, ``confirm`` and
``report``: each parses its target, makes one library call and renders the result (``render``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .render import (console, print_confirmed, print_epoch, print_evaluation, print_exported, print_front,
                     print_note, print_report, print_retrained, print_spec_check)


def cmd_validate(args) -> int:
    from ..spec import load_spec
    from ..validate import check_spec

    spec = load_spec(args.spec)
    check = check_spec(spec)
    print_spec_check(spec, check)
    if not check.buildable:
        raise UsageError(f"{spec.source}: space: no buildable arch; e.g. {check.corners[0].error}")
    console.print(f"[green]ok[/]: {spec.source} is valid ({check.buildable} corner archs built)")
    return 0


def _open_study(args):
    """(study, its storage URL with the password masked, the URL) of a command's target."""
    from ..storage import load_study, mask_password, open_storage, resolve_target

    url, name = resolve_target(args.target, args.study)
    shown = mask_password(url)
    return load_study(open_storage(url, create=False), name, shown), shown, url


def cmd_show(args) -> int:
    study, shown, _ = _open_study(args)
    print_front(study, shown)
    return 0


def cmd_dashboard(args) -> int:
    from ..dashboard import plan, serve
    from ..storage import mask_password, resolve_target

    url, name = resolve_target(args.target, args.study)
    dashboard = plan(url, name, args.host, args.port, args.artifacts)

    def announce(address: str) -> None:
        store = dashboard.artifact_dir if dashboard.artifact_dir.is_dir() else "none (no trained trial yet)"
        # Plain lines, never wrapped: scripts and terminals pick the address out of them.
        print(f"optuna-dashboard on {mask_password(url)}; artifacts: {store}", flush=True)
        print(f"open {address}  (Ctrl-C stops it)", flush=True)

    serve(dashboard, args.host, args.port, announce)
    return 0


def cmd_export(args) -> int:
    from ..artifacts import artifact_dir, open_artifact_store
    from ..export import export_trials, select_trials

    if args.by and args.top is None:
        raise UsageError("--by: only with --top K")
    study, shown, url = _open_study(args)
    store = open_artifact_store(artifact_dir(url, study, args.artifacts, must_exist=True), create=False)
    trials = select_trials(study, numbers=args.trial, top=args.top, by=args.by)
    if not trials:
        raise UsageError(f"study {study.study_name}: no complete trained trial to export yet")
    out = Path(args.output or Path("exports") / study.study_name)
    result = export_trials(study, trials, out, store, shown, onnx=args.onnx)
    for note in result.notes:
        print_note(f"note: {note}")
    print_exported(study, trials, result, out)
    return 0


def cmd_train(args) -> int:
    from ..retrain import retrain

    def on_epoch(result) -> bool:
        print_epoch(result)
        return False

    done = retrain(args.exported, out_dir=args.output, epochs=args.epochs, data_source=args.data_source,
                   train_size=args.train_size, seed=args.seed, on_epoch=on_epoch)
    print_retrained(done)
    return 0


def cmd_evaluate(args) -> int:
    from ..retrain import evaluate_export

    print_evaluation(evaluate_export(args.exported, data_source=args.data_source))
    return 0


def cmd_confirm(args) -> int:
    from ..artifacts import refresh_plots
    from ..confirm import confirm_front

    study, shown, _ = _open_study(args)
    spec = None
    if args.target.endswith((".yaml", ".yml")):
        from ..spec import load_spec

        spec = load_spec(args.target)  # its data section says where the images are here

    def on_seed(number: int, seed: int) -> None:
        console.print(f"trial {number}: training with seed {seed}", highlight=False)

    done = confirm_front(study, seeds=args.seeds, spec=spec, on_seed=on_seed)
    if not done:
        raise UsageError(f"study {study.study_name}: no Pareto-optimal trained trial to confirm yet")
    refresh_plots(study)
    print_confirmed(study, done)
    return 0


def cmd_report(args) -> int:
    from ..report import build_report, render_markdown
    from ..seeds import confirmations

    study, _, _ = _open_study(args)
    baseline = dict(args.baseline) if args.baseline else None
    try:
        report = build_report(study.get_trials(deepcopy=False), args.by, baseline,
                              confirmations=confirmations(study.user_attrs))
    except ValueError as exc:
        raise UsageError(f"{'--baseline' if baseline and 'baseline' in str(exc) else '--by'}: {exc}") from None
    if not report.groups:
        raise UsageError(f"study {study.study_name}: no complete trained trial to report yet")
    text = render_markdown(report)
    if args.output:
        out = Path(args.output)
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"-o {out}: cannot write it ({exc.strerror})") from None
    print_report(study, text, args.output)
    return 0
