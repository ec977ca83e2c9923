"""The model catalog: which models this platform runs, read from ``ml_platform/defs/models/*/defs.yaml``.

Each model is a folder holding a ``ModelPipeline`` component instance (``defs.yaml``) and its
dataset spec. The folder name is the model's name: the namespace of its asset keys, partitions,
jobs, landing folders, logs, metrics and routes. Plain Python (PyYAML only): the CLI, the simulator,
serving helpers and tests read the catalog without loading Dagster; the component uses
:func:`parse_entry` so both sides agree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ml_platform.spec import DatasetSpec, SpecError, load_spec_file

MODELS_DIR = Path(__file__).parent / "defs" / "models"
COMPONENT_TYPE = "ml_platform.components.ModelPipeline"
MODEL_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MODEL_ENV = "ML_PLATFORM_MODEL"


class CatalogError(ValueError):
    """The model catalog is inconsistent, or a model name is unknown."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the platform: its name, spec and ownership."""

    name: str
    spec: DatasetSpec
    default: bool
    owners: tuple[str, ...]
    source: Path
    description: str = ""


def check_model_name(name: str, where: str = "model name") -> str:
    """Return ``name`` if it is a valid model name (used in keys, job names, paths, routes, labels)."""
    if not MODEL_NAME_PATTERN.match(name):
        raise CatalogError(
            f"{where} {name!r} is not a valid model name: use 1-40 characters, lowercase letters, digits "
            "and '_', starting with a letter"
        )
    return name


def parse_entry(defs_yaml: Path, attributes: dict[str, Any]) -> ModelEntry:
    """The model declared by one ``defs.yaml`` (its folder name is the model's name)."""
    name = check_model_name(defs_yaml.parent.name, f"{defs_yaml.parent}: folder")
    spec_ref = str(attributes.get("spec") or "spec.yaml")
    spec_path = (defs_yaml.parent / spec_ref).resolve()
    if not spec_path.is_file():
        raise CatalogError(f"{defs_yaml}: attributes.spec: no spec file {spec_ref!r} beside it ({spec_path})")
    try:
        spec = load_spec_file(spec_path)
    except SpecError as exc:
        raise CatalogError(str(exc)) from exc  # a SpecError names the file and the key already
    owners = attributes.get("owners") or []
    if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
        raise CatalogError(f"{defs_yaml}: attributes.owners must be a list of strings")
    default = attributes.get("default", False)
    if not isinstance(default, bool):
        raise CatalogError(f"{defs_yaml}: attributes.default must be true or false")
    return ModelEntry(
        name=name,
        spec=spec,
        default=default,
        owners=tuple(owners),
        source=defs_yaml,
        description=str(attributes.get("description") or spec.description),
    )


def _read(defs_yaml: Path) -> ModelEntry | None:
    try:
        raw = yaml.safe_load(defs_yaml.read_text())
    except yaml.YAMLError as exc:
        raise CatalogError(f"{defs_yaml}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != COMPONENT_TYPE:
        return None
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise CatalogError(f"{defs_yaml}: attributes must be a mapping")
    return parse_entry(defs_yaml, attributes)


def list_models(models_dir: Path | None = None) -> list[ModelEntry]:
    """Every model, sorted by name; exactly one is the default."""
    folder = models_dir or MODELS_DIR
    entries = [e for p in sorted(folder.glob("*/defs.yaml")) if (e := _read(p)) is not None]
    if not entries:
        raise CatalogError(f"no models in {folder}: scaffold one (see docs/models.md)")
    defaults = [e for e in entries if e.default]
    if len(entries) > 1 and len(defaults) != 1:
        names = ", ".join(str(e.source) for e in defaults) or "none"
        raise CatalogError(f"exactly one model must set `default: true`; found {len(defaults)}: {names}")
    registry_names: dict[str, str] = {}
    for entry in entries:
        other = registry_names.setdefault(entry.spec.model.name, entry.name)
        if other != entry.name:
            raise CatalogError(
                f"models {other!r} and {entry.name!r} register the same MLflow model {entry.spec.model.name!r}"
            )
    return entries


def default_model_name(models_dir: Path | None = None) -> str:
    """The model that unprefixed jobs, routes and commands act on."""
    entries = list_models(models_dir)
    return next((e.name for e in entries if e.default), entries[0].name)


def get_model(name: str | None = None, models_dir: Path | None = None) -> ModelEntry:
    """The named model; ``None`` means ``ML_PLATFORM_MODEL`` or else the default model."""
    entries = list_models(models_dir)
    wanted = name or os.environ.get(MODEL_ENV, "").strip() or None
    if wanted is None:
        return next((e for e in entries if e.default), entries[0])
    for entry in entries:
        if entry.name == wanted:
            return entry
    raise CatalogError(f"no model named {wanted!r}; models: {', '.join(e.name for e in entries)}")


def model_names(models_dir: Path | None = None) -> list[str]:
    return [e.name for e in list_models(models_dir)]


if __name__ == "__main__":  # python -m ml_platform.catalog check | list | scaffold <name>
    from ml_platform.onboarding import main

    raise SystemExit(main())
