"""The Dagster UI shows the platform's assets and gates, and runs ``training_job`` when asked.

A real ``dagster dev`` (webserver + daemon) serves a temporary platform home with the bundled
iris data landed; Debian's Chromium drives it through Playwright. Screenshots of what the
test saw are saved in ``test-artifacts/ui/``.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ml_platform.catalog import model_names
from ml_platform_tests.ui.conftest import CHROMIUM, LOCATION, SENSOR, DagsterUI, sensor_states

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = [
    pytest.mark.ui,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (apt-get install chromium)"),
]

ASSETS = ("raw_batch", "training_dataset", "candidate_model", "reference_snapshot")
CHECKS = {
    "raw_batch": ("batch_passes_expectation_suite",),
    "candidate_model": ("meets_metric_thresholds", "no_regression_against_champion", "serving_smoke_test"),
}
RUN_TIMEOUT_S = 240
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

_RUN_QUERY = """
query ($runId: ID!) { runOrError(runId: $runId) { __typename
    ... on Run { runId status jobName tags { key value } }
    ... on PythonError { message } } }
"""
_RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId jobName status } } } }"
_RUN_LOGS_QUERY = """
query ($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
    __typename ... on MessageEvent { message stepKey }
    ... on ExecutionStepFailureEvent { error { message } } } } } }
"""


def shown(page: Page, name: str) -> Locator:
    """A visible element naming ``name``: its text, or the full name of a middle-truncated label."""
    return page.get_by_text(name, exact=True).or_(page.get_by_title(name, exact=True)).filter(visible=True).first


def screenshot(page: Page, path: Path) -> None:
    """Save what the page shows once its requests have settled (icons and panels load late)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    with contextlib.suppress(PlaywrightTimeoutError):  # live pages may keep polling: not a failure
        page.wait_for_load_state("networkidle", timeout=5_000)
    page.screenshot(path=str(path))


def _run(ui: DagsterUI, run_id: str) -> dict[str, Any]:
    run = ui.graphql(_RUN_QUERY, {"runId": run_id})["runOrError"]
    assert run["__typename"] == "Run", run
    return dict(run)


def _failure_summary(ui: DagsterUI, run_id: str) -> str:
    events = ui.graphql(_RUN_LOGS_QUERY, {"runId": run_id})["logsForRun"].get("events", [])
    failures = [e for e in events if "Failure" in e["__typename"] or "Error" in e["__typename"]]
    lines = []
    for event in failures or events[-10:]:
        error = (event.get("error") or {}).get("message", "")
        lines.append(f"{event['__typename']} {event.get('stepKey') or ''}: {event.get('message', '')} {error}"[:800])
    return "\n".join(lines) + f"\n--- dagster dev log ---\n{ui.log_tail(40)}"


def test_asset_graph_shows_every_asset_and_check(page: Page, dagster_ui: DagsterUI, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    # Global asset lineage: one group per model (iris, wine, ...), collapsed at first; ⌥E expands all.
    page.goto("/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    for model in model_names():
        expect(shown(page, model), f"asset group of model {model}").to_be_visible()
    for _ in range(5):  # the shortcut is a no-op until the graph has rendered; expanding shows in the URL
        page.keyboard.press("Alt+KeyE")
        with contextlib.suppress(AssertionError):
            expect(page).to_have_url(re.compile(r"[?&]expanded="), timeout=3_000)
            break
    for asset in ASSETS:
        expect(shown(page, asset), f"asset {asset} in the lineage graph").to_be_visible()
    screenshot(page, artifacts_dir / "01-asset-graph.png")

    # Each asset's Checks tab lists its gates (the UI has no global list of checks).
    for number, (asset, checks) in enumerate(CHECKS.items(), start=2):
        page.goto(f"/assets/iris/{asset}?view=checks")
        expect(page.get_by_text(f"Checks ({len(checks)})", exact=True)).to_be_visible()
        for check in checks:
            expect(shown(page, check), f"check {check} on {asset}").to_be_visible()
        screenshot(page, artifacts_dir / f"0{number}-checks-{asset}.png")


def test_launch_training_job_from_launchpad(page: Page, dagster_ui: DagsterUI, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    # No sensor may launch a run of its own: the run checked below is the one the UI launches.
    sensors = sensor_states(dagster_ui)
    assert SENSOR in sensors, sensors
    assert set(sensors.values()) == {"STOPPED"}, sensors

    # Launchpad of the job. raw_batch is dynamically partitioned and nothing is registered yet:
    # launching without a partition runs the job in sweep mode over everything in incoming/.
    page.goto(f"/locations/{LOCATION}/jobs/training_job/playground")
    expect(page.get_by_text("No errors", exact=True)).to_be_visible(timeout=60_000)
    screenshot(page, artifacts_dir / "04-launchpad.png")
    page.get_by_role("button", name="Launch Run").click()
    confirm = page.get_by_role("dialog").filter(has_text="This job is partitioned")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Confirm").click()

    # The UI opens the new run's page.
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    match = re.search(r"/runs/([0-9a-f-]{36})", page.url)
    assert match, page.url
    run_id = match.group(1)
    expect(page.get_by_text(run_id[:8], exact=True).first).to_be_visible()

    # While the run works, keep its page open behind a blank tab: painting the live Gantt chart
    # costs about half a core, which the run needs more on a two-core machine.
    blank = page.context.new_page()
    blank.bring_to_front()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run = _run(dagster_ui, run_id)
    while run["status"] not in TERMINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(2)
        run = _run(dagster_ui, run_id)
    page.bring_to_front()
    blank.close()
    if run["status"] != "SUCCESS":
        screenshot(page, artifacts_dir / "05-run.png")
        pytest.fail(f"run {run_id} is {run['status']}:\n{_failure_summary(dagster_ui, run_id)}")

    # What the UI shows: the status badge and the tab title.
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(page).to_have_title(re.compile(r"\[SUCCESS\]"))
    screenshot(page, artifacts_dir / "05-run-success.png")

    # The run was launched from the UI, and it is the only one (no sensor run raced it).
    assert run["jobName"] == "training_job"
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/from_ui") == "true", tags
    assert "dagster/sensor_name" not in tags, tags
    runs = dagster_ui.graphql(_RUNS_QUERY)["runsOrError"]["results"]
    assert [r["runId"] for r in runs] == [run_id], runs

    # Every gate on the candidate model now shows as succeeded.
    page.goto("/assets/iris/candidate_model?view=checks")
    for check in CHECKS["candidate_model"]:
        expect(shown(page, check)).to_be_visible()
    expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(CHECKS["candidate_model"]))
    expect(page.get_by_text("Passed", exact=True)).to_be_visible()  # the selected check's latest result
    screenshot(page, artifacts_dir / "06-checks-after-run.png")
