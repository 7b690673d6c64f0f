"""The command line's grammar: every command, its arguments and their checks."""

from __future__ import annotations

import argparse


def number_type(kind: type, minimum: float, inclusive: bool = True, noun: str | None = None):
    """An argparse type: ``kind`` values >= (or >) ``minimum``, with a one-line complaint."""
    wanted = noun or f"{'an integer' if kind is int else 'a number'} {'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


_positive_int = number_type(int, 1)
_seconds = number_type(float, 0, inclusive=False, noun="seconds > 0")
_seed = number_type(int, 0)


class _Parser(argparse.ArgumentParser):
    """argparse with its complaint on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixsearch", description="Hardware-aware multi-objective "
                                     "architecture search of compact vision models (MLP-Mixer, MobileNet).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run or resume the study a spec declares")
    run.add_argument("spec", help="the spec YAML file, e.g. spaces/mnist.yaml")
    run.add_argument("--storage", help="Optuna storage URL (default: study.storage or sqlite:///studies/<name>.db)")
    run.add_argument("--seed", type=_seed, help="sampler and training seed (default: study.seed)")
    run.add_argument("--jobs", type=_positive_int, default=1,
                     help="worker processes on this machine (default 1); with the default storage, "
                          "several use the journal file studies/<name>.log")

    worker = commands.add_parser("worker", help="join a study as one more worker (e.g. on another machine)")
    worker.add_argument("spec", help="the same spec YAML file the other workers use")
    worker.add_argument("--storage", help="the shared storage URL, e.g. postgresql://user:pass@host/db")
    worker.add_argument("--seed", type=_seed, help="training seed (default: study.seed)")
    worker.add_argument("--index", type=_seed, help="worker number: sampler seed = seed + index "
                        "(default: a random sampler seed, so that workers explore differently)")
    worker.add_argument("--threads", type=_positive_int, help="torch CPU threads for this worker")
    worker.add_argument("--join", action="store_true", help="wait until another worker has created the study, "
                        "then join it (how run --jobs starts its workers)")
    worker.add_argument("--spec-checked", action="store_true", help=argparse.SUPPRESS)  # run --jobs checked it
    # the workers run --jobs started, this one among them: it takes up the threads of those that leave
    worker.add_argument("--siblings", type=_positive_int, help=argparse.SUPPRESS)
    worker.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # the run --jobs process; stop when it dies
    # until it has checked the spec; it then names the storage: "go URL" on standard input
    worker.add_argument("--wait-for-go", action="store_true", help=argparse.SUPPRESS)
    for command in (run, worker):
        command.add_argument("--trials", type=_positive_int, help="finished trials wanted in total (default: study.trials)")
        command.add_argument("--timeout", type=_seconds, help="stop starting new trials after this many seconds")
        command.add_argument("--repeats", type=_positive_int, help="seeds per arch and recipe; the accuracy "
                             "objective is their mean (default: study.repeats)")
        command.add_argument("--artifacts", metavar="DIR", help="artifact store directory for trained trials' files "
                             "(default: artifacts/<name>/ beside a SQLite or journal file, else studies/artifacts)")

    validate = commands.add_parser("validate", help="check a spec and build the archs at its extremes")
    validate.add_argument("spec")

    show = commands.add_parser("show", help="the Pareto front and trial counts of a study")
    show.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    show.add_argument("--study", help="study name (needed when the storage holds several)")
    _add_takeaway_commands(commands)
    _add_seed_commands(commands)
    return parser


def _field_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    return name, value


def _add_seed_commands(commands) -> None:
    confirm = commands.add_parser("confirm", help="train the Pareto-optimal trials again with more seeds")
    confirm.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    confirm.add_argument("--study", help="study name (needed when the storage holds several)")
    confirm.add_argument("--seeds", type=_positive_int, default=3, help="more seeds per trial (default 3)")

    report = commands.add_parser("report", help="an ablation table: groups of arch fields, mean ± std over seeds")
    report.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    report.add_argument("--study", help="study name (needed when the storage holds several)")
    report.add_argument("--by", nargs="+", metavar="FIELD", default=["arch"],
                        help="group by these fields: arch, sharing, bias, fusion, label, any arch field "
                             "(patch_size, dilation...) or train.FIELD (default: arch)")
    report.add_argument("--baseline", nargs="+", type=_field_value, metavar="FIELD=VALUE",
                        help="the group the others are compared with (Welch's t-test on per-seed test accuracy)")
    report.add_argument("-o", "--output", metavar="FILE.md", help="also write the table as Markdown to this file")


def _add_takeaway_commands(commands) -> None:
    dashboard = commands.add_parser("dashboard", help="browse a study in optuna-dashboard, with its artifacts")
    dashboard.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    dashboard.add_argument("--study", help="study name (opens its page; default: the only study of the storage)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=number_type(int, 1), default=8080, help="port (default 8080)")
    dashboard.add_argument("--artifacts", metavar="DIR", help="artifact store directory (default: the study's)")

    export = commands.add_parser("export", help="write chosen trials as YAML files with their trained weights")
    export.add_argument("target", help="a spec YAML file, a storage URL, or a .db file")
    export.add_argument("--study", help="study name (needed when the storage holds several)")
    pick = export.add_mutually_exclusive_group()
    pick.add_argument("--pareto", action="store_true", help="the Pareto-optimal trials (the default)")
    pick.add_argument("--trial", type=_seed, nargs="+", metavar="N", help="these trial numbers")
    pick.add_argument("--top", type=_positive_int, metavar="K", help="the best K trials by --by")
    export.add_argument("--by", metavar="METRIC", help="metric for --top: an objective or test_accuracy "
                        "(default: the first objective)")
    export.add_argument("-o", "--output", metavar="DIR", help="output directory (default: exports/<study>)")
    export.add_argument("--onnx", action="store_true", help="also write the inference form as ONNX")
    export.add_argument("--artifacts", metavar="DIR", help="artifact store directory (default: the study's)")

    train = commands.add_parser("train", help="retrain an exported arch from scratch with its recorded recipe")
    train.add_argument("exported", help="an exported YAML file (see mixsearch export)")
    train.add_argument("--epochs", type=_positive_int, help="epochs (default: the recorded recipe's)")
    train.add_argument("--data-source", metavar="SRC", help="data source, e.g. bundled, torchvision, idx:PATH")
    train.add_argument("--train-size", type=_positive_int, help="training images (default: the recorded size)")
    train.add_argument("--seed", type=_seed, help="seed (default: the trial's, which repeats it exactly on CPU)")
    train.add_argument("-o", "--output", metavar="DIR", default="retrained",
                       help="where the retrained YAML and weights go (default: retrained)")

    evaluate = commands.add_parser("evaluate", help="accuracy of an exported file's weights on its test split")
    evaluate.add_argument("exported", help="an exported YAML file with weights")
    evaluate.add_argument("--data-source", metavar="SRC", help="data source (default: the recorded one)")
