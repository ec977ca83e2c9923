"""The at-scale profile of deploy/vm/, started for real: PostgreSQL, `mlflow server` on it, Dagster on it.

PostgreSQL is Debian's (``/usr/lib/postgresql/<major>/bin``): ``initdb`` and ``pg_ctl`` refuse to run
as root, so as root (CI) they run as the ``postgres`` user (``runuser``) in a temporary folder owned
by it; otherwise as the current user. The cluster listens on 127.0.0.1 on a free port, trust auth,
no fsync (a throwaway test cluster). Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ml_platform_tests.conftest import REPO_ROOT, free_port
from ml_platform_tests.serving.helpers import wait_http

START_TIMEOUT = 300.0


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (make system-deps installs Debian's postgresql)")
    return Path(found[-1]).parent


@dataclass
class Postgres:
    port: int
    folder: Path

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL naming the driver: SQLAlchemy 2.1 picks psycopg 3 for ``postgresql://``."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(self.dsn("postgres"))
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)


def _as_postgres_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="ml-platform-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, log = folder / "data", folder / "server.log"
    port = free_port()
    subprocess.run(
        _as_postgres_user([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    started = subprocess.run(
        _as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log.read_text() if log.exists() else ''}")
    try:
        yield Postgres(port, folder)
    finally:
        subprocess.run(
            _as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``deploy/vm/mlflow-server.sh``: tracking + registry in PostgreSQL, artifacts served by the server."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "MLFLOW_BACKEND_STORE_URI": postgres.create_database("mlflow"),
        "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "artifacts"),
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        ["sh", str(REPO_ROOT / "deploy" / "vm" / "mlflow-server.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/health", timeout=START_TIMEOUT, process=process)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{(folder / 'server.log').read_text()[-3000:]}")
        yield url
    finally:
        stop_group(process)
        log.close()


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM the process group of ``process``, SIGKILL what is left after ``timeout``."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
