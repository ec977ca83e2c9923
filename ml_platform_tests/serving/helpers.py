"""Real serving processes and a real MLflow store for the serving tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ml_platform_tests.conftest import REPO_ROOT, free_port

MODEL_NAME = "iris-random-forest"
WINE_MODEL_NAME = "wine-gradient-boosting"
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
START_TIMEOUT = 180.0
METRICS_FLUSH_SECONDS = 0.6  # API server processes flush pending metric counts every 0.5 s


@dataclass(frozen=True)
class MlflowStore:
    """A sqlite tracking store with file artifacts, and the versions registered in it."""

    root: Path
    tracking_uri: str
    onnx_version: str  # iris random forest, verified ONNX graph
    other_version: str  # a different forest, verified ONNX graph
    sklearn_version: str  # the onnx_version's model, registered without the ONNX graph
    wine_version: str  # a wine model (another platform model, served side by side with iris)


def read_jsonl(folder: Path, pattern: str) -> list[dict[str, Any]]:
    """Every JSON line of the files matching ``pattern`` below ``folder``."""
    rows = []
    for path in sorted(folder.glob(pattern)):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric_sum(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= lbls)


class ServingProcess:
    """``python -m serving`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        env: dict[str, str],
        *,
        home: Path | None = None,
        model: str = "iris",
        default_log_dir: bool = False,
    ) -> None:
        """``default_log_dir``: set no PREDICTION_LOG_DIR, so serving logs to ``<home>/logs/predictions/<model>``."""
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.home = home or workdir / "home"
        self.model = model
        self.log_dir = self.home / "logs" / "predictions" / model if default_log_dir else workdir / "predictions"
        self.output = workdir / f"{name}.out"
        workdir.mkdir(parents=True, exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if k not in ("PREDICTION_LOG_DIR", "MODEL_NAME")}
        self.env = {
            **inherited,
            "PYTHONPATH": str(REPO_ROOT),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            **({} if default_log_dir else {"PREDICTION_LOG_DIR": str(self.log_dir)}),
            "ML_PLATFORM_HOME": str(self.home),
            "MODEL_AUTO_REFRESH_SECONDS": "0",
            "LOG_LEVEL": "warning",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServingProcess:
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> ServingProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (graceful: logs flushed), then SIGKILL to the process group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            return None
        finally:
            with suppress(ProcessLookupError):  # whatever the main process left behind goes too
                os.killpg(self.process.pid, signal.SIGKILL)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no output>"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The merged metrics, once every API process has flushed its pending counts.

        A scrape reaches one API server process; the others flush every 0.5 s (docs/serving.md), so
        ``/metrics`` is exact after that delay.
        """
        time.sleep(METRICS_FLUSH_SECONDS)
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)


@contextmanager
def running(*servers: ServingProcess) -> Iterator[None]:
    """Start servers concurrently, wait until all are ready; stop them all on exit."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield
    finally:
        for server in servers:
            server.stop()


def mlflow_server(backend_uri: str, artifacts: Path, port: int, output: Path) -> subprocess.Popen[bytes]:
    """A real ``mlflow server`` on 127.0.0.1 (one worker) over an existing sqlite store."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with open(output, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                backend_uri,
                "--default-artifact-root",
                artifacts.as_uri(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_http(url: str, timeout: float = 120.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@dataclass
class DrainOutcome:
    """What clients saw while the server's process group got SIGTERM under load."""

    exit_code: int
    outcomes: Counter[str]  # status code as text, "refused" or an httpx error name
    answered: set[str]  # request ids answered 200


def sigterm_under_load(
    server: ServingProcess, rows: list[list[float]], *, clients: int = 6, per_connection: int | None = None
) -> DrainOutcome:
    """Load ``server`` from ``clients`` threads, killpg(SIGTERM) it after 1.5 s, and collect every outcome.

    ``per_connection`` opens a new connection every so many requests (so several API processes
    sharing the port all get some); None keeps one connection per client.
    """
    assert server.process is not None
    results: list[tuple[str, str]] = []
    stop = threading.Event()

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            request_id = f"drain-{i}-{n}"
            try:
                with httpx.Client(base_url=server.url, timeout=30) as session:
                    sent = 0
                    while not stop.is_set() and (per_connection is None or sent < per_connection):
                        request_id = f"drain-{i}-{n}"
                        n += 1
                        sent += 1
                        response = session.post(
                            "/predict", json={"features": rows}, headers={"X-Request-ID": request_id}
                        )
                        results.append((request_id, str(response.status_code)))
            except httpx.ConnectError:
                results.append((request_id, "refused"))  # after the API server stopped accepting: fine
                time.sleep(0.05)
            except httpx.HTTPError as exc:
                results.append((request_id, type(exc).__name__))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    os.killpg(server.process.pid, signal.SIGTERM)
    code = server.process.wait(60)
    stop.set()
    for thread in threads:
        thread.join()
    return DrainOutcome(
        code,
        Counter(status for _, status in results),
        {request_id for request_id, status in results if status == "200"},
    )
