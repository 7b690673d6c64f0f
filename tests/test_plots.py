"""The study plots drawn from a real SQLite study."""

import optuna

from mixsearch.artifacts import hypervolume_figure


def test_hypervolume_curve_lies_in_0_1_and_ends_at_the_final_front(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="plots",
                                directions=["maximize", "minimize"])
    # (accuracy, params): a front that grows, one dominated trial, and an infeasible one left out.
    for accuracy, params, attrs in [(0.5, 1000, {}), (0.9, 9000, {}), (0.6, 9500, {}), (0.8, 3000, {}),
                                    (0.99, 500, {"infeasible_reason": "params 500 > 400"}), (0.95, 20000, {})]:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, [accuracy, params])

    figure = hypervolume_figure(study)
    ys = list(figure.data[0].y)
    assert list(figure.data[0].x) == [0, 1, 2, 3, 5]
    assert all(0.0 <= y <= 1.0 for y in ys), ys
    assert ys[-1] == 1.0
    assert ys == sorted(ys) and ys[2] == ys[1]  # the dominated trial 2 adds nothing
    assert figure.layout.yaxis.title.text == "hypervolume / hypervolume of the final front"


def test_plots_are_refreshed_at_most_a_fiftieth_of_the_time(monkeypatch):
    from mixsearch import artifacts

    clock = {"now": 0.0}
    refreshed = []

    def slow_refresh(study):  # a refresh that takes 0.5 s of the fake clock
        refreshed.append(clock["now"])
        clock["now"] += 0.5

    monkeypatch.setattr(artifacts.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(artifacts, "refresh_plots", slow_refresh)
    plots = artifacts.PlotRefresher()
    for _ in range(60):  # a trial every second
        plots.after_trial(study=None)
        clock["now"] += 1.0
    # first at once, then each time 25 s (0.5 s / 2%) have passed since the last one ended
    assert refreshed == [0.0, 25.5, 51.0]
