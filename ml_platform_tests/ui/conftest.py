"""A real ``dagster dev`` (webserver + daemon) on a temporary platform home, and headless Chromium.

``dagster_ui`` (one per module) bootstraps a fresh platform home, stops every ``<model>_incoming_data_sensor``
there before the daemon starts (and any other running sensor right after), so the only run is the
one a test launches from the UI. It then starts ``dagster dev -m ml_platform`` on a free
127.0.0.1 port in its own process group and always kills that whole group afterwards (dagster dev
spawns the webserver, the daemon, code servers and run workers). ``page`` is a fresh browser
page per test; a failing test leaves a screenshot. Screenshots and the ``dagster dev`` log go
to ``test-artifacts/ui/`` (git-ignored)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ml_platform.catalog import model_names

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOCATION = "ml_platform"
SENSOR = "iris_incoming_data_sensor"  # the default model's
# Every model's incoming-data sensor, stopped before the daemon starts (bootstrap lands data for each).
INCOMING_SENSORS = [f"{model}_incoming_data_sensor" for model in model_names()]
SERVER_START_TIMEOUT_S = 150
# Environment variables that must not leak from the caller into the temporary home.
_DROPPED_PREFIXES = ("ML_PLATFORM_", "MLFLOW_", "DAGSTER_")
_DROPPED = ("MODEL_MIN_ACCURACY", "REFERENCE_DATASET_URI", "REFERENCE_DATASET_MAX_ROWS")

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report so ``page`` can screenshot a failed test."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _platform_env(home: Path) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(_DROPPED_PREFIXES) and key not in _DROPPED
    }
    pythonpath = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        ML_PLATFORM_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        MLFLOW_DISABLE_TELEMETRY="true",
        GX_ANALYTICS_ENABLED="False",
        DAGSTER_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
    )
    return env  # MLFLOW_TRACKING_URI is unset: the sqlite store under the home is used.


def _run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class DagsterUI:
    """A running ``dagster dev``: where it listens and what it writes."""

    base_url: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 15) -> dict[str, Any]:
        """POST a query to the webserver's GraphQL API; returns ``data`` (raises on errors)."""
        request = urllib.request.Request(
            f"{self.base_url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.load(response)
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return dict(body["data"])

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log, lines)


_WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def _wait_until_loaded(ui: DagsterUI) -> None:
    """Wait for the webserver to answer and the ml_platform code location to be loaded."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if ui.process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {ui.process.returncode}:\n{ui.log_tail()}")
        try:
            with urllib.request.urlopen(f"{ui.base_url}/server_info", timeout=5) as response:
                response.read()
            entries = ui.graphql(_WORKSPACE_QUERY)["workspaceOrError"].get("locationEntries", [])
            entry = next((e for e in entries if e["name"] == LOCATION), None)
            last = json.dumps(entry)
            if entry and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location {LOCATION} failed to load: {loaded.get('message')}")
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = repr(exc)
        time.sleep(1)
    raise RuntimeError(f"dagster dev not ready after {SERVER_START_TIMEOUT_S}s ({last}):\n{ui.log_tail()}")


SENSORS_QUERY = """
query ($selector: RepositorySelector!) { sensorsOrError(repositorySelector: $selector) {
    __typename ... on Sensors { results { name sensorState { id status } } } } }
"""
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
_STOP_SENSOR = """
mutation ($id: String!) { stopSensor(id: $id) { __typename
    ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }
"""


def sensor_states(ui: DagsterUI) -> dict[str, str]:
    """Sensor name -> RUNNING / STOPPED, as the webserver reports it."""
    sensors = ui.graphql(SENSORS_QUERY, {"selector": REPOSITORY})["sensorsOrError"]
    assert sensors["__typename"] == "Sensors", sensors
    return {s["name"]: s["sensorState"]["status"] for s in sensors["results"]}


def _stop_other_sensors(ui: DagsterUI) -> None:
    """Stop any other sensor that runs by default: on a fresh home they have nothing to act on yet."""
    sensors = ui.graphql(SENSORS_QUERY, {"selector": REPOSITORY})["sensorsOrError"]["results"]
    for sensor in sensors:
        if sensor["sensorState"]["status"] == "RUNNING":
            result = ui.graphql(_STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
            assert result["__typename"] == "StopSensorMutationResult", result


def _stop(process: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """Stop ``dagster dev`` as Ctrl-C would, then SIGKILL whatever is left of its process group.

    Only the leader gets the interrupt: it shuts the webserver and the daemon down through their
    shutdown pipes. Interrupting every process of the group at once can leave them hanging.
    """
    pgid = process.pid  # start_new_session=True: the group id is the leader's pid
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        process.send_signal(signal.SIGINT)
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # the code server and run workers may outlive the leader
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test-artifacts/ui/``, emptied of the previous session's screenshots and log."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    for old in [*ARTIFACTS_DIR.glob("*.png"), *ARTIFACTS_DIR.glob("*.log")]:
        old.unlink()
    return ARTIFACTS_DIR


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path) -> Iterator[DagsterUI]:
    """``dagster dev -m ml_platform`` on a bootstrapped temporary platform home."""
    home = tmp_path_factory.mktemp("ui-home")
    env = _platform_env(home)
    log = artifacts_dir / "dagster-dev.log"
    log.write_text("")
    _run([sys.executable, "-m", "ml_platform.bootstrap"], env, home, log)
    # The sensor is RUNNING by default and the daemon would launch its own run for the landed
    # file within seconds; stop it in the instance before the daemon starts.
    for sensor in INCOMING_SENSORS:
        _run([sys.executable, "-m", "dagster", "sensor", "stop", "-m", "ml_platform", sensor], env, home, log)

    port = _free_port()
    # A process started with SIGINT ignored (e.g. pytest in a background CI step) passes that on,
    # and dagster dev would then ignore Ctrl-C and SIGTERM; give the child the default handling.
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "dagster", "dev", "-m", "ml_platform", "-h", "127.0.0.1", "-p", str(port)],
                env=env,
                cwd=home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    ui = DagsterUI(base_url=f"http://127.0.0.1:{port}", home=home, log=log, process=process)
    try:
        _wait_until_loaded(ui)
        _stop_other_sensors(ui)
        yield ui
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import expect, sync_playwright

    # Two cores shared by the webserver, the daemon, a run and Chromium: be patient.
    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(
    browser: Browser, dagster_ui: DagsterUI, artifacts_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A fresh browser page on the UI; the Dagster community pop-up never gets in the way."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, base_url=dagster_ui.base_url)
    # The UI asks "Join the Dagster community" once per browser profile; mark it as seen,
    # and dismiss it should it appear anyway (e.g. after a key rename).
    context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"');")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )
    try:
        yield page
    finally:
        reports = request.node.stash.get(_REPORTS, {})
        if any(r.failed for r in reports.values()):
            try:
                page.screenshot(path=str(artifacts_dir / f"FAILED-{request.node.name}.png"), full_page=True)
            except Exception as exc:  # a screenshot must not hide the real failure
                print(f"could not save failure screenshot: {exc}")
        context.close()
