"""The Dockerfiles: pinned bases, non-root, health checks, contract defaults.

No Docker engine runs here, so the files are parsed and the health-check
command is run for real against a local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import DOCKER, REPO_ROOT, dockerignore_allows, find, require_binary, run

DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if p.suffix != ".dockerignore")
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def of(path: Path, keyword: str) -> list[str]:
    return [args for kw, args in instructions(path) if kw == keyword]


def env_of(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in of(path, "ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", args):
            env[key] = value
    return env


def test_the_three_images_are_there():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.dagster", "Dockerfile.mlflow"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_with_pinned_bases(path: Path):
    froms = of(path, "FROM")
    assert len(froms) >= 2, "build stage + runtime stage"
    stages: set[str] = set()
    for args in froms:
        parts = args.split()
        image = parts[0]
        if image not in stages:
            # An exact patch version and a digest: rebuilds get the same base.
            assert PINNED_BASE.match(image), image
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    # One base for all stages and all images.
    assert len({a.split()[0] for a in froms if a.split()[0] not in stages}) == 1


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_uid_10001_with_a_healthcheck(path: Path):
    users = of(path, "USER")
    assert users, "no USER: the image would run as root"
    assert users[-1] == "10001:10001"
    # The user is created in the runtime stage, before it is used.
    runtime = path.read_text().rsplit("\nFROM ", 1)[1]
    assert "useradd --system --uid 10001 --gid 10001" in runtime
    (healthcheck,) = of(path, "HEALTHCHECK")
    assert healthcheck.split("CMD", 1)[1].strip().startswith("[")  # exec form: no shell needed


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_secrets_in_the_image_definition(path: Path):
    for key in env_of(path):
        assert not re.search(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|PRIVATE", key), key
    for args in of(path, "ARG"):
        assert not re.search(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|PRIVATE", args), args
    text = path.read_text()
    assert not re.search(r"(?i)(aws_secret|BEGIN [A-Z ]*PRIVATE KEY|ghp_[A-Za-z0-9]{20,})", text)


def test_serving_image_contract():
    path = DOCKER / "Dockerfile"
    assert json.loads(of(path, "ENTRYPOINT")[-1]) == ["python", "-m", "serving"]
    env = env_of(path)
    # The service binds 127.0.0.1 by default: unreachable from outside a container.
    assert env["HOST"] == "0.0.0.0"
    assert env["PORT"] == "8000"
    assert env["ML_PLATFORM_HOME"] == "/var/lib/ml_platform"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus-multiproc"
    assert env["MODEL_URI"] == "models:/iris-random-forest@champion"
    assert env["TRACK"] == "stable"
    assert of(path, "EXPOSE") == ["8000"]
    # Built from the repository root, the project installed from its wheel.
    assert any("pip wheel --wheel-dir /wheels ." in run for run in of(path, "RUN"))
    assert of(path, "COPY")[0] == ". ."


def test_dagster_image_runs_the_code_server_as_cmd():
    path = DOCKER / "Dockerfile.dagster"
    assert not of(path, "ENTRYPOINT"), "an ENTRYPOINT would swallow the run launcher's command"
    assert json.loads(of(path, "CMD")[-1]) == [
        "dagster",
        "code-server",
        "start",
        "-m",
        "ml_platform",
        "-h",
        "0.0.0.0",
        "-p",
        "4000",
    ]
    (healthcheck,) = of(path, "HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["dagster", "api", "grpc-health-check", "-p", "4000"]
    assert of(path, "EXPOSE") == ["4000"]
    assert env_of(path)["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    requirements = (DOCKER / "dagster-requirements.txt").read_text()
    for package in ("dagster-postgres==", "dagster-k8s==", "s3fs=="):
        assert package in requirements


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_is_an_allow_list_that_lets_through_what_the_build_reads(path: Path):
    ignore = Path(f"{path}.dockerignore")
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "everything is excluded unless re-included"
    included = {p[1:] for p in patterns if p.startswith("!")}
    # Every file of deploy/docker the build reads is re-included and exists.
    code = "\n".join(args for kw, args in instructions(path) if kw in {"COPY", "RUN"})
    for needed in set(re.findall(r"deploy/docker/[\w.-]+", code)):
        assert needed in included, needed
        assert (REPO_ROOT / needed).is_file(), needed
    if ". ." in of(path, "COPY"):
        assert {"pyproject.toml", "ml_platform/", "serving/"} <= included
        for excluded in ("**/.ml_platform", "**/__pycache__", "**/.env"):
            assert excluded in patterns
    for local_state in (".venv", ".git", ".ml_platform", "ml_platform_tests"):
        assert not any(p.startswith(local_state) for p in included)


# --- the serving HEALTHCHECK, run for real --------------------------------


def _healthcheck_command() -> list[str]:
    (healthcheck,) = of(DOCKER / "Dockerfile", "HEALTHCHECK")
    options, command = healthcheck.split("CMD", 1)
    assert "--timeout=" in options and "--start-period=" in options
    argv = json.loads(command)
    assert argv[0] == "python"
    assert "127.0.0.1" in argv[-1] and "/health" in argv[-1]
    return [sys.executable, *argv[1:]]


@pytest.fixture
def health_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A local server whose /health answers with the status in state["status"]."""
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(state["status"] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()


def _check(port: int) -> int:
    env = {"PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(_healthcheck_command(), env=env, capture_output=True, timeout=20, check=False).returncode


def test_healthcheck_passes_on_200_and_fails_on_errors(health_server):
    port, state = health_server
    assert _check(port) == 0
    state["status"] = 503
    assert _check(port) != 0
    state["status"] = 500
    assert _check(port) != 0


def test_healthcheck_fails_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    assert _check(free_port) != 0


# --- the images agree with the manifests -----------------------------------


def test_serving_image_and_deployment_agree(rendered):
    env = env_of(DOCKER / "Dockerfile")
    for name in ("serving-stable", "serving-canary"):
        deployment = find(rendered["base"], "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"]["runAsUser"] == 10001
        assert container["ports"][0]["containerPort"] == int(env["PORT"])
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        # The image's writable folders are writable volumes in the pod.
        assert env["ML_PLATFORM_HOME"] in mounts
        assert env["PROMETHEUS_MULTIPROC_DIR"] in mounts


# --- the build stage, without Docker ----------------------------------------


def _ignore_patterns(dockerfile: Path) -> list[str]:
    text = Path(f"{dockerfile}.dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerignore_matcher_follows_docker_rules():
    patterns = ["*", "!pyproject.toml", "!serving/", "**/__pycache__", "**/*.py[cod]"]
    assert dockerignore_allows(patterns, "pyproject.toml")
    assert dockerignore_allows(patterns, "serving/api.py")
    assert not dockerignore_allows(patterns, "serving/__pycache__/api.cpython-311.pyc")
    assert not dockerignore_allows(patterns, "serving/api.pyc")
    assert not dockerignore_allows(patterns, ".venv/bin/python")
    assert not dockerignore_allows(patterns, "ml_platform_tests/test_x.py")


def _context(dockerfile: Path) -> list[str]:
    """The repository files (tracked or not ignored by git) a build would send."""
    patterns = _ignore_patterns(dockerfile)
    git = require_binary("git")
    listed = run([git, "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT)
    assert listed.returncode == 0, listed.stderr
    return sorted(
        p for p in listed.stdout.splitlines() if dockerignore_allows(patterns, p) and (REPO_ROOT / p).is_file()
    )


def test_both_project_images_get_the_same_project_files():
    serving, dagster = _context(DOCKER / "Dockerfile"), _context(DOCKER / "Dockerfile.dagster")
    assert set(dagster) - set(serving) == {"deploy/docker/dagster-requirements.txt"}
    assert set(serving) <= set(dagster)
    # Nothing of the local state, the tests or the other deploy files is sent.
    assert not [
        p for p in dagster if p.startswith((".venv", ".ml_platform", "ml_platform_tests/", ".git/", "deploy/k8s"))
    ]
    assert _context(DOCKER / "Dockerfile.mlflow") == ["deploy/docker/mlflow-requirements.txt"]


def test_build_context_builds_the_project_wheel(tmp_path: Path):
    """`pip wheel .` on exactly the files the .dockerignore lets through, as the
    build stage does (pip fetches the build backend the way the image build
    does; dependencies are not built here)."""
    if not (REPO_ROOT / "pyproject.toml").is_file():
        pytest.skip("no pyproject.toml at the repository root yet")
    context = tmp_path / "context"
    for rel in _context(DOCKER / "Dockerfile"):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, context / rel)
    out = tmp_path / "wheels"
    build = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(context)], timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # What the images run, and the data the code location reads at import.
    assert "serving/__main__.py" in names
    assert "ml_platform/__init__.py" in names
    assert any(n.startswith("ml_platform/defs/models/") and n.endswith("/spec.yaml") for n in names)
    assert any(n.startswith("ml_platform/defs/models/") and n.endswith("/defs.yaml") for n in names)
