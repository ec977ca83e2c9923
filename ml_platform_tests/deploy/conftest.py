"""Fixtures for the deploy/ tests: the kustomize output, rendered once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .helpers import KUSTOMIZATIONS, load_yaml_documents, require_binary, run


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    """`kubectl kustomize` output of every kustomization, rendered once."""
    kubectl = require_binary("kubectl")
    out = {}
    for name, path in KUSTOMIZATIONS.items():
        result = run([kubectl, "kustomize", str(path)])
        assert result.returncode == 0, f"kustomize {name} failed:\n{result.stderr}"
        out[name] = result.stdout
    return out


@pytest.fixture(scope="session")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: load_yaml_documents(text) for name, text in rendered_text.items()}


@pytest.fixture(scope="session")
def rendered_dir(rendered_text: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered manifests as files, one per kustomization (for scanners)."""
    folder = tmp_path_factory.mktemp("rendered-k8s")
    for name, text in rendered_text.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder
