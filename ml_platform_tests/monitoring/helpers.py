"""Real processes for the monitoring tests: serving, Pushgateway and Prometheus; and drift_job runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

from ml_platform_tests.conftest import REPO_ROOT, free_port

MODEL_NAME = "iris-random-forest"
START_TIMEOUT = 240.0


def binary(name: str) -> str | None:
    """Path of a system binary (also /usr/sbin, /usr/bin), or None."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/bin", "/usr/sbin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


class Process:
    """A subprocess in its own session, stopped with SIGTERM, then SIGKILL to its group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], output: Path) -> None:
        self.name = name
        self.output = output
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "wb") as out:
            self.popen = subprocess.Popen(
                args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no output>"

    def wait_http(self, url: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            with suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def stop(self, timeout: float = 40.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


@dataclass
class Serving:
    """``python -m serving`` for one pinned iris version, logging into ``log_dir`` = ``<log_root>/iris``."""

    process: Process
    url: str
    log_dir: Path
    log_root: Path


def start_serving(name: str, workdir: Path, tracking_uri: str, model_uri: str) -> Serving:
    """Start the serving service on a free port of 127.0.0.1 (not yet ready: call ``wait_ready``)."""
    port = free_port()
    log_root = workdir / "predictions"
    log_dir = log_root / "iris"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ML_PLATFORM_HOME": str(workdir / "home"),
        # Set explicitly: the registry URI for the model download follows it.
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREDICTION_LOG_DIR": str(log_dir),
        "MODEL_AUTO_REFRESH_SECONDS": "0",
        "LOG_LEVEL": "warning",
    }
    args = [sys.executable, "-m", "serving", "--model-uri", model_uri, "--port", str(port), "--track", "stable"]
    process = Process(name, args, env, workdir / f"{name}.out")
    return Serving(process, f"http://127.0.0.1:{port}", log_dir, log_root)


def wait_ready(serving: Serving) -> None:
    serving.process.wait_http(f"{serving.url}/health")


def send_traffic(serving: Serving, rows: Any, spec: Any, prefix: str, batch: int = 10) -> list[str]:
    """POST the rows' features to /predict in batches, then each batch's true labels to /feedback."""
    request_ids = []
    with httpx.Client(base_url=serving.url, timeout=30) as client:
        for start in range(0, len(rows), batch):
            chunk = rows.iloc[start : start + batch]
            request_id = f"{prefix}-{start:05d}"
            records = json.loads(chunk[spec.feature_names].to_json(orient="records"))
            response = client.post("/predict", json={"records": records}, headers={"X-Request-ID": request_id})
            assert response.status_code == 200, response.text
            labels = [int(v) for v in chunk[spec.target.name]]
            token = response.json()["feedback_token"]
            feedback = client.post(
                "/feedback", json={"request_id": request_id, "feedback_token": token, "labels": labels}
            )
            assert feedback.status_code == 200, feedback.text
            request_ids.append(request_id)
    return request_ids


def count_logged_rows(folder: Path, pattern: str) -> int:
    """Rows in the complete lines of matching log files: a prediction line holds ``rows`` rows, feedback one."""
    total = 0
    for path in folder.glob(pattern):
        data = path.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            total += int(json.loads(line).get("rows", 1))
    return total


def wait_for_rows(folder: Path, pattern: str, expected: int, timeout: float = 30.0) -> None:
    """Wait until the log writers have flushed ``expected`` rows to files matching ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_logged_rows(folder, pattern) >= expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{folder}/{pattern}: {count_logged_rows(folder, pattern)} rows, expected {expected}")


@contextmanager
def pushgateway(workdir: Path) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on 127.0.0.1; yields its URL."""
    path = binary("prometheus-pushgateway")
    if path is None:
        import pytest

        pytest.skip("prometheus-pushgateway is not installed (make system-deps)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = Process(
        "pushgateway",
        [path, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={workdir / 'pushgateway.data'}"],
        dict(os.environ),
        workdir / "pushgateway.out",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http(f"{url}/-/ready", timeout=30)
        yield url
    finally:
        process.stop(10)


@contextmanager
def prometheus(workdir: Path, pushgateway_url: str, rule_files: list[Path]) -> Iterator[str]:
    """A real Prometheus scraping the Pushgateway every second and evaluating ``rule_files``."""
    path = binary("prometheus")
    if path is None:
        import pytest

        pytest.skip("prometheus is not installed (make system-deps)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    target = pushgateway_url.removeprefix("http://")
    rules = ", ".join(json.dumps(str(p)) for p in rule_files)
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n"
        f"  - {{job_name: pushgateway, honor_labels: true, static_configs: [{{targets: ['{target}']}}]}}\n"
    )
    process = Process(
        "prometheus",
        [
            path,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        dict(os.environ),
        workdir / "prometheus.out",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http(f"{url}/-/ready", timeout=60)
        yield url
    finally:
        process.stop(10)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The Pushgateway's /metrics as ``{(name, labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> dict[frozenset, float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def run_drift_job(instance: dg.DagsterInstance, day: str, model: str = "iris") -> dg.ExecuteInProcessResult:
    """``<model>_drift_job`` for one day, in process, against a real instance."""
    from ml_platform.definitions import defs

    job = defs.resolve_job_def(f"{model}_drift_job")
    return job.execute_in_process(instance=instance, partition_key=day, raise_on_error=False)


def values(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """The metadata values of the run's materialization of ``asset`` (its name within the model: ``drift_report``)."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    assert len(events) == 1, [e.asset_key for e in result.get_asset_materialization_events()]
    return values(dict(events[0].materialization.metadata))


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Check name -> evaluation, for the checks evaluated in the run."""
    return {e.check_name: e for e in result.get_asset_check_evaluations()}
