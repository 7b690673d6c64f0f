"""What the commands print: number formats, per-trial lines, and the front table at 100 columns."""

import io

import optuna
from rich.console import Console

from mixsearch.arch import MixerArch
from mixsearch.cli import render
from mixsearch.storage import quiet_experimental


def mixer_with_sharing() -> MixerArch:
    return MixerArch(in_channels=1, image_size=(28, 28), num_classes=10, layers=3, channels=48, token_hidden=64,
                     channel_hidden=192, patch_size=4, dilation=3,
                     sharing={"token.fc1": (0, 0, 0), "token.fc2": (0, 0, 1), "channel.fc1": (0, 1, 2),
                              "channel.fc2": (0, 0, 0)})


def test_number_formats():
    assert render.format_value("params", 13920.0) == "13,920"
    assert render.format_value("flops", 1234567.0) == "1,234,567"
    assert render.format_value("accuracy", 0.908) == "0.9080"
    assert [render.format_ms(v) for v in (0.29531, 0.012345, 1.2345, 12.345, 123.45, 1234.5)] == [
        "0.295 ms", "0.0123 ms", "1.23 ms", "12.3 ms", "123 ms", "1,234 ms"]


def test_arch_summary_names_every_shared_site():
    assert mixer_with_sharing().describe() == "mixer L3 C48 D64/192 P4d3 shared: token fc1+fc2, channel fc2"


def study_with_front(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="mnist-mixer",
                                directions=["maximize", "minimize", "minimize"])
    with quiet_experimental():  # metric names are stable for our use; Optuna still labels them experimental
        study.set_metric_names(["accuracy", "params", "latency"])
    arch = mixer_with_sharing()
    for accuracy, params, latency in [(0.9545, 22636, 0.37123), (0.9301, 3667, 0.35)]:
        trial = study.ask()
        for key, value in {"arch": arch.to_dict(), "arch_summary": arch.describe(), "test_accuracy": 0.925,
                           "epochs_run": 10}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, [accuracy, params, latency])
    return study


def test_trial_line_uses_the_formats(tmp_path):
    trial = study_with_front(tmp_path).trials[0]
    assert render.trial_line(trial, ["accuracy", "params", "latency"]) == (
        "trial   0 complete 0.9545, 22,636, 0.371 ms  mixer L3 C48 D64/192 P4d3 shared: token fc1+fc2, channel fc2")


def test_front_table_reads_whole_at_100_columns(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=100, color_system=None))
    render.print_front(study_with_front(tmp_path), "sqlite:///study.db")
    text = out.getvalue()
    assert "…" not in text
    assert all(len(line) <= 100 for line in text.splitlines())
    table = " ".join(line.strip("│ ") for line in text.splitlines())
    for word in ("22,636", "0.371 ms", "0.9545", "3,667", "shared:", "token", "fc1+fc2,", "channel", "fc2"):
        assert word in table


def test_a_worker_writes_each_trial_line_in_one_piece(tmp_path, monkeypatch):
    # Workers share one output; with unbuffered output print() writes the newline on its own,
    # and another worker's line could land between the two writes.
    from mixsearch.cli.run import LineReporter

    writes: list[str] = []

    class RecordingStdout:
        def write(self, text):
            writes.append(text)
            return len(text)

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", RecordingStdout())
    LineReporter("worker 1", ["accuracy", "params", "latency"]).trial_finished(study_with_front(tmp_path).trials[0])
    assert writes == ["worker 1: trial   0 complete 0.9545, 22,636, 0.371 ms  mixer L3 C48 D64/192 P4d3 "
                      "shared: token fc1+fc2, channel fc2\n"]
