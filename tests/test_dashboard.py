"""The real ``mixsearch dashboard`` on a tiny study: its HTTP API, then its pages in headless Chromium."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli, start_cli, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
OBJECTIVES = ["accuracy", "params", "latency"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def answers(url: str) -> bool:
    try:
        get_json(url)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    import yaml

    from conftest import TINY_SPEC, merge

    folder = tmp_path_factory.mktemp("dash")
    spec = merge(TINY_SPEC, {"study": {"trials": 3}, "objectives": OBJECTIVES})
    (folder / "tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = run_cli(["run", "tiny.yaml"], folder)
    assert done.returncode == 0, done.stderr
    assert "mixsearch dashboard studies/tiny.db --study tiny" in done.stdout
    return folder


@pytest.fixture(scope="module")
def dashboard(study_dir):
    """The dashboard as a real process; yields (base URL, the page URL it printed, its output lines)."""
    port = free_port()
    process = start_cli(["dashboard", "tiny.yaml", "--port", port], study_dir)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/api/studies") or process.poll() is not None, 60, "the dashboard to answer")
        assert process.poll() is None, process.stderr.read()
        page = wait_for(lambda: next((l.split()[1] for l in lines if l.startswith("open ")), None), 10,
                        "the dashboard's address")
        yield base, page, lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except Exception:
            process.kill()
            process.wait()


def test_dashboard_serves_the_study_and_its_artifacts(dashboard, study_dir):
    base, page, lines = dashboard
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["tiny"]
    study_id = summaries[0]["study_id"]
    assert page == f"{base}/dashboard/studies/{study_id}"
    assert any(f"artifacts: {study_dir / 'studies' / 'artifacts' / 'tiny'}" in l for l in lines)

    detail = get_json(f"{base}/api/studies/{study_id}?after=0")
    assert detail["objective_names"] == OBJECTIVES
    assert len(detail["trials"]) == 3
    assert {g["id"] for g in detail["plotly_graph_objects"]} >= {"mixsearch-hypervolume", "mixsearch-learning-curves",
                                                                 "mixsearch-accuracy-vs-params"}
    trained = [t for t in detail["trials"] if t["state"] == "Complete"
               and not any(a["key"] == "duplicate_of" for a in t["user_attrs"])]
    assert trained
    trial = trained[0]
    names = {a["filename"]: a["artifact_id"] for a in trial["artifacts"]}
    assert set(names) == {"arch.yaml", "curve.csv", "weights.safetensors"}
    url = f"{base}/artifacts/{study_id}/{trial['trial_id']}/{names['curve.csv']}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read().decode().startswith("epoch,train_loss,val_accuracy,seconds")


def test_dashboard_page_renders_the_pareto_front_in_chromium(dashboard, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs the Debian chromium package at /usr/bin/chromium (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, page_url, _ = dashboard
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(page_url)
            front = page.locator(".MuiCard-root", has_text="Pareto Front").first
            front.wait_for(timeout=30_000)
            # The front is a real plotly plot with points, with the study's metric names on it.
            front.locator(".js-plotly-plot .scatterlayer .point").first.wait_for(timeout=30_000)
            assert front.locator(".js-plotly-plot .scatterlayer .point").count() >= 1
            text = front.inner_text()
            assert "accuracy" in text and "params" in text
            # The study-level plots a run stores render too.
            for title in ("Hypervolume of the Pareto front by trial", "Learning curves (validation accuracy by epoch)",
                          "Validation accuracy against parameters"):
                page.get_by_text(title).first.wait_for(timeout=30_000)
            shot = tmp_path / "study.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_dashboard_errors_are_one_line(study_dir):
    done = run_cli(["dashboard", "tiny.yaml", "--study", "nope", "--port", free_port()], study_dir, timeout=60)
    assert done.returncode == 2
    assert [l for l in done.stderr.splitlines() if l.startswith("error:")] == [
        "error: --study: no study named 'nope' in sqlite:///studies/tiny.db; it holds: tiny"]
    done = run_cli(["dashboard", "tiny.yaml", "--artifacts", "elsewhere", "--port", free_port()], study_dir, timeout=60)
    assert done.returncode == 2
    assert [l for l in done.stderr.splitlines() if l.startswith("error:")] == [
        "error: --artifacts elsewhere: no such directory"]
    assert not (study_dir / "elsewhere").exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["dashboard", "tiny.yaml", "--port", port], study_dir, timeout=60)
    assert done.returncode == 1
    assert f"error: --port {port}: already in use" in done.stderr
