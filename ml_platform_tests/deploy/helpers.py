"""Paths and helpers shared by the deploy/ tests.

The tools (kubectl, promtool, checkov) are real binaries; a test skips, saying
which one and how CI installs it, only when the binary is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
MONITORING = DEPLOY / "monitoring"
WORKFLOWS = DEPLOY / "ci" / "github-actions"

# Every kustomization this repository ships, by a short name.
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "gateway-api": K8S / "overlays" / "gateway-api",
    "ingress-nginx": K8S / "overlays" / "ingress-nginx",
    "mlflow": K8S / "mlflow",
}

INSTALL_HINTS = {
    "kubectl": "install kubectl (CI: the Kubernetes apt repository, see deploy/README.md)",
    "promtool": "apt-get install prometheus",
    "checkov": "python3 -m venv .venv-tools && .venv-tools/bin/pip install checkov",
    "git": "apt-get install git",
}


def require_binary(name: str) -> str:
    """The path of a tool on PATH, or skip the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed here; {INSTALL_HINTS.get(name, 'install it')}")
    return path


def checkov_binary() -> str:
    """checkov from the tools venv CI creates, else from PATH, else skip."""
    tools = REPO_ROOT / ".venv-tools" / "bin" / "checkov"
    if tools.is_file() and os.access(tools, os.X_OK):
        return str(tools)
    return require_binary("checkov")


def run(cmd: list[str], *, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def dockerignore_allows(patterns: list[str], relpath: str) -> bool:
    """Whether a file goes into the build context, by .dockerignore rules.

    Docker's semantics for the patterns used here: the last matching pattern
    wins, `!` re-includes, a pattern matching a parent folder matches the
    files in it, `**` spans folders (also none), `*` stays within one.
    """
    import re

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = relpath.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if any(regex(body.strip("/")).match(c) for c in candidates):
            allowed = negate
    return allowed
