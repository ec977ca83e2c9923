"""Onboarding a model is configuration: scaffold an instance, fill in its spec, check it.

Plain Python (no Dagster): used by the ``ModelPipeline`` scaffolder
(``dg scaffold defs ml_platform.components.ModelPipeline models/<name>``), by
``python -m ml_platform.cli scaffold-model <name>`` and by ``python -m ml_platform.catalog check``.

* :func:`scaffold_model` writes ``<models_dir>/<name>/defs.yaml`` and a commented ``spec.yaml``
  template. The template is a valid spec (the code location keeps loading) whose example values
  are marked ``TODO``: replace them with your columns, classes and estimator.
* :func:`check_models` validates every instance of a models folder and returns one message per
  problem, each naming the file and the key (``.../churn/spec.yaml: features[2].min: ...``).

See ``docs/models.md`` for every key.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ml_platform.catalog import COMPONENT_TYPE, MODELS_DIR, CatalogError, check_model_name, list_models, parse_entry
from ml_platform.spec import SpecError, load_spec_file

# Keys of a defs.yaml file (dg's ComponentFileModel) and of the ModelPipeline attributes.
DEFS_KEYS = ("type", "attributes", "requirements", "post_processing", "template_vars_module")
ATTRIBUTE_KEYS = ("spec", "default", "owners", "description")
TEMPLATE_MARKER = "TODO"
SCHEMA_COMMENT = "# yaml-language-server: $schema=../../../../docs/spec.schema.json"

DEFS_TEMPLATE = """\
# The {name} model: one instance of the ModelPipeline component (docs/models.md).
# The folder name ({name}) is the model's name: asset keys {name}/..., jobs {name}_training_job, ...,
# landing folder <platform home>/data/{name}/incoming/, router path /models/{name}/predict.
type: ml_platform.components.ModelPipeline
attributes:
  spec: spec.yaml            # the dataset spec, relative to this file (default: spec.yaml)
  default: false             # true for exactly one model: it also gets training_job, /predict, ...
  owners: []                 # Dagster asset owners, e.g. ["team:ml-platform", "you@example.com"]
  description: ""            # optional; default: the spec's description
"""

SPEC_TEMPLATE = (
    SCHEMA_COMMENT
    + """
# Dataset spec of the {name} model: one file drives the batch gate (GX suite), the training
# columns, the MLflow signature, the serving request schema and the drift checks.
# Every key, its default and what is allowed: docs/models.md and docs/spec.schema.json.
# Replace every value marked TODO, then run: python -m ml_platform.catalog check
name: {name}                               # dataset name: lowercase letters, digits, _
description: "TODO: what the model predicts"
bootstrap_file: null                       # optional: a CSV beside this file (or in ml_platform/data/)
                                           # landed on a fresh platform home, e.g. {name}.csv
features:                                  # the input columns, in the model's order
  # TODO: your columns. type: float | int (optional min/max) or category (categories required)
  - {{name: feature_a, type: float, min: 0.0, max: 100.0, description: "TODO"}}
  - {{name: feature_b, type: int, min: 0, description: "TODO"}}
  - {{name: segment, type: category, categories: [small, large], description: "TODO"}}
target:
  name: label                              # TODO: the label column
  classes: ["no", "yes"]                   # TODO: every class value as in the CSV (quote yes/no/true/false)
  labels: []                               # optional readable names, one per class
model:
  name: {registered}                       # registered model name in MLflow
  estimator: sklearn.ensemble.RandomForestClassifier   # sklearn.<module>.<Classifier>, allowlisted modules
  params: {{n_estimators: 100, max_depth: 8, random_state: 42}}
  test_size: 0.25                          # held-out share for the metric gates
  random_state: 42                         # seed of the split
thresholds:
  min_accuracy: 0.70                       # MODEL_MIN_ACCURACY overrides
  min_macro_f1: null                       # optional
  regression_tolerance: 0.02               # candidate may trail the champion by this much accuracy
validation:
  min_rows: 10
  max_rows: 10000000
  allow_extra_columns: false
  min_classes: 2                           # a batch with fewer distinct classes is quarantined
  min_rows_per_class: 1
reference:
  max_rows: 100000                         # REFERENCE_DATASET_MAX_ROWS overrides
drift:
  drift_share_threshold: 0.5
  psi_warn: 0.1
  psi_alert: 0.25
  min_window_rows: 30
  severity: WARN                           # WARN alerts, ERROR gates
  min_live_accuracy: 0.70
"""
)


class ScaffoldError(ValueError):
    """The model cannot be scaffolded (bad name, folder exists)."""


def render_templates(name: str) -> dict[str, str]:
    """File name -> text of a new model instance named ``name``."""
    check_model_name(name)
    registered = name.replace("_", "-") + "-model"
    return {
        "defs.yaml": DEFS_TEMPLATE.format(name=name),
        "spec.yaml": SPEC_TEMPLATE.format(name=name, registered=registered),
    }


def scaffold_model(name: str, models_dir: Path | None = None, *, force: bool = False) -> list[Path]:
    """Write ``<models_dir>/<name>/{defs.yaml,spec.yaml}``; refuse to overwrite unless ``force``."""
    try:
        files = render_templates(name)
    except CatalogError as exc:
        raise ScaffoldError(str(exc)) from exc
    return write_templates((models_dir or MODELS_DIR) / name, files, force=force)


def write_templates(folder: Path, files: dict[str, str], *, force: bool = False) -> list[Path]:
    """Write ``files`` into ``folder`` (created); existing files are refused unless ``force``."""
    existing = [folder / f for f in files if (folder / f).exists()]
    if existing and not force:
        raise ScaffoldError(f"{folder}: already holds {', '.join(p.name for p in existing)}; not overwriting")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in files.items():
        path = folder / filename
        path.write_text(text)
        written.append(path)
    return written


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a model instance: the file, the key and what is allowed."""

    file: Path
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


def _check_defs(defs_yaml: Path) -> tuple[list[Problem], dict[str, Any] | None]:
    try:
        raw = yaml.safe_load(defs_yaml.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [Problem(defs_yaml, "", f"not readable YAML: {exc}")], None
    if not isinstance(raw, dict):
        return [Problem(defs_yaml, "", "must be a YAML mapping with `type` and `attributes`")], None
    problems = [
        Problem(defs_yaml, str(key), f"unknown key; allowed: {', '.join(DEFS_KEYS)}")
        for key in raw
        if key not in DEFS_KEYS
    ]
    if raw.get("type") != COMPONENT_TYPE:
        problems.append(Problem(defs_yaml, "type", f"must be {COMPONENT_TYPE}; got {raw.get('type')!r}"))
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        return [*problems, Problem(defs_yaml, "attributes", "must be a mapping")], None
    problems += [
        Problem(defs_yaml, f"attributes.{key}", f"unknown key; allowed: {', '.join(ATTRIBUTE_KEYS)}")
        for key in attributes
        if key not in ATTRIBUTE_KEYS
    ]
    if "spec" in attributes and not isinstance(attributes["spec"], str):
        problems.append(Problem(defs_yaml, "attributes.spec", "must be a path relative to defs.yaml"))
    return problems, attributes


def check_instance(defs_yaml: Path) -> list[Problem]:
    """Every problem of one model instance (its defs.yaml and its spec)."""
    problems, attributes = _check_defs(defs_yaml)
    try:
        check_model_name(defs_yaml.parent.name)
    except CatalogError as exc:
        problems.append(Problem(defs_yaml.parent, "folder name", str(exc)))
        return problems
    if attributes is None or problems:
        return problems
    spec_path = (defs_yaml.parent / str(attributes.get("spec") or "spec.yaml")).resolve()
    if not spec_path.is_file():
        return [Problem(defs_yaml, "attributes.spec", f"no spec file at {spec_path}")]
    try:
        spec = load_spec_file(spec_path)
    except SpecError as exc:
        if exc.problems:
            return [Problem(spec_path, key, message) for key, message in exc.problems]
        return [Problem(spec_path, "", str(exc).removeprefix(f"{spec_path}: "))]
    try:
        parse_entry(defs_yaml, attributes)
    except CatalogError as exc:
        return [Problem(defs_yaml, "", str(exc).removeprefix(f"{defs_yaml}: "))]
    bootstrap = spec.bootstrap_path()
    if bootstrap is not None and not bootstrap.is_file():
        missing = f"no file {spec.bootstrap_file!r} beside the spec or in ml_platform/data/"
        problems.append(Problem(spec_path, "bootstrap_file", missing))
    return problems


def template_warnings(models_dir: Path | None = None) -> list[str]:
    """Instances whose spec still holds scaffold placeholders (TODO)."""
    warnings = []
    for spec_yaml in sorted((models_dir or MODELS_DIR).glob("*/spec.yaml")):
        lines = [line for line in spec_yaml.read_text().splitlines() if not line.lstrip().startswith("#")]
        if any(TEMPLATE_MARKER in line for line in lines):
            warnings.append(f"{spec_yaml}: still holds scaffold placeholders ({TEMPLATE_MARKER}): fill them in")
    return warnings


def check_models(models_dir: Path | None = None) -> list[Problem]:
    """Every problem of every model instance, then the catalog-wide rules (one default, unique names)."""
    folder = models_dir or MODELS_DIR
    instances = sorted(folder.glob("*/defs.yaml"))
    if not instances:
        return [Problem(folder, "", "no model instances (<name>/defs.yaml): scaffold one (docs/models.md)")]
    problems = [p for defs_yaml in instances for p in check_instance(defs_yaml)]
    if not problems:
        try:
            list_models(folder)
        except CatalogError as exc:
            problems.append(Problem(folder, "", str(exc)))
    return problems


def main(argv: list[str] | None = None) -> int:
    """``check`` validates every model instance; ``scaffold <name>`` writes a new one."""
    parser = argparse.ArgumentParser(prog="python -m ml_platform.catalog", description=main.__doc__)
    parser.add_argument("--models-dir", type=Path, default=None, help=f"models folder (default: {MODELS_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate every model instance (defs.yaml + spec.yaml); exit 1 on a problem")
    sub.add_parser("list", help="list the models")
    scaffold = sub.add_parser("scaffold", help="write <models-dir>/<name>/{defs.yaml,spec.yaml} templates")
    scaffold.add_argument("name", help="model name: lowercase letters, digits, _ (1-40, starting with a letter)")
    scaffold.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    return run(args.command, args.models_dir, name=getattr(args, "name", None), force=getattr(args, "force", False))


def run(command: str, models_dir: Path | None, *, name: str | None = None, force: bool = False) -> int:
    """Run one onboarding command, printing its outcome; the exit code."""
    if command == "scaffold":
        assert name is not None
        try:
            written = scaffold_model(name, models_dir, force=force)
        except ScaffoldError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for path in written:
            print(f"wrote {path}")
        print(f"next: fill in {written[-1]} (TODO markers), then: python -m ml_platform.catalog check")
        return 0
    problems = check_models(models_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    if command == "list":
        for entry in list_models(models_dir):
            flag = " (default)" if entry.default else ""
            print(f"{entry.name}{flag}: {entry.spec.model.name}, {len(entry.spec.features)} features  {entry.source}")
        return 0
    for warning in template_warnings(models_dir):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"ok: {', '.join(e.name for e in list_models(models_dir))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
