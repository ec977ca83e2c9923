"""The declarative dataset spec: one YAML file per model drives everything.

From a spec come the GX expectation suite, the training columns, the MLflow
signature, the serving request schema and the drift column mapping. Adding a
tabular classification model means writing a spec, not code.

The spec is a set of frozen pydantic dataclasses: one source for validation, defaults and
documentation. Every key's description and default live on its ``Field``; the JSON Schema
published in ``docs/spec.schema.json`` (``python -m ml_platform.spec --schema``) is generated
from them, and editors validate ``spec.yaml`` against it. They are dataclasses (not
``BaseModel``) so ``dataclasses.replace`` and positional construction keep working; every
construction, ``replace`` included, is validated.

A spec that fails validation raises one :class:`SpecError` naming the file, the key path of
every problem (``features[2].min``) and what is allowed there.

Loading a spec needs only PyYAML and pydantic; nothing heavy is imported here.
"""

from __future__ import annotations

import math
import os
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema

from ml_platform.numeric_limits import FLOAT32_MAX

BUNDLED_DATA_DIR = Path(__file__).parent / "data"
SCHEMA_ID = "https://github.com/ml-platform/ml_platform/docs/spec.schema.json"
# Estimators are public scikit-learn classes from these modules only; the class itself is checked
# (a classifier, a BaseEstimator) by ml_platform.ml.training.resolve_estimator_class before it is built.
ALLOWED_ESTIMATOR_MODULES = (
    "discriminant_analysis",
    "dummy",
    "ensemble",
    "gaussian_process",
    "linear_model",
    "naive_bayes",
    "neighbors",
    "neural_network",
    "svm",
    "tree",
)
ESTIMATOR_PATTERN = rf"^sklearn\.({'|'.join(ALLOWED_ESTIMATOR_MODULES)})\.[A-Z][A-Za-z0-9]*$"
_ESTIMATOR_PATTERN = re.compile(ESTIMATOR_PATTERN)
# The dataset name reaches folder names and report paths; the registered model name reaches
# models:/ URIs, deployment state and generated configs (the local deployer accepts the same set).
DATASET_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
REGISTERED_MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
BOOTSTRAP_FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.csv$"

FeatureType = Literal["float", "int", "category"]

_CONFIG = ConfigDict(extra="forbid", defer_build=True)
_YAML_BOOL_HINT = 'YAML reads unquoted yes/no/true/false/on/off as booleans: quote them ("yes") to mean the strings'


class SpecError(ValueError):
    """A dataset spec is missing, malformed or inconsistent.

    ``problems`` holds one ``(key path, message)`` pair per problem; ``source`` the file, if any.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None, source: Path | None = None):
        super().__init__(message)
        self.problems = problems or []
        self.source = source


def _strings(value: Any, what: str) -> Any:
    """Category and label values are strings; numbers are taken as their text, booleans refused."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        return value  # pydantic reports the wrong type
    out = []
    for item in value:
        if isinstance(item, bool):
            raise ValueError(f"must be strings, got the boolean {item!r}; {_YAML_BOOL_HINT}")
        out.append(str(item) if isinstance(item, int | float) else item)
    return tuple(out)


def _finite_float32(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ValueError(
            f"must be a finite number within the float32 range (|x| <= {FLOAT32_MAX:.8g}): the ONNX "
            f"fast path computes in float32; got {value!r}"
        )
    return value


@dataclass(frozen=True, config=_CONFIG)
class FeatureSpec:
    """One input column: its type and what values are valid."""

    name: str = Field(min_length=1, description="Column name, as in the CSV header and the serving request.")
    type: FeatureType = Field(
        default="float",
        description="`float` or `int` (numeric, checked against min/max) or `category` (one of `categories`).",
    )
    min: float | None = Field(
        default=None,
        description="Smallest valid value (numeric features). Unset: only the float32 range bounds it.",
    )
    max: float | None = Field(
        default=None,
        description="Largest valid value (numeric features). Unset: only the float32 range bounds it.",
    )
    categories: tuple[str, ...] = Field(
        default=(),
        description="The valid values of a `category` feature (required for it, not allowed on numeric ones). "
        "Training one-hot encodes them; a value outside the set fails the batch gate and is refused by serving.",
    )
    description: str = Field(default="", description="Free text shown in docs and the serving schema.")

    @field_validator("categories", mode="before")
    @classmethod
    def _categories_are_strings(cls, value: Any) -> Any:
        return _strings(value, "categories")

    @field_validator("min", "max", mode="after")
    @classmethod
    def _bounds_fit_float32(cls, value: float | None) -> float | None:
        return _finite_float32(value)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.type == "category":
            if not self.categories:
                raise ValueError("categories: a category feature needs a non-empty 'categories' list")
            if self.min is not None or self.max is not None:
                raise ValueError("min/max: only numeric (float, int) features take a range")
        elif self.categories:
            raise ValueError(f"categories: only 'category' features take categories (this one is {self.type!r})")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories: duplicate values in {list(self.categories)}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: min {self.min:g} is greater than max {self.max:g}")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in ("float", "int")


@dataclass(frozen=True, config=_CONFIG)
class TargetSpec:
    """The label column and its class set."""

    name: str = Field(min_length=1, description="The label column of the CSV.")
    classes: tuple[int | str, ...] = Field(
        min_length=2,
        description="Every class value, as it appears in the CSV (integers or strings). At least two.",
    )
    labels: tuple[str, ...] = Field(
        default=(),
        description="Readable names of the classes, in the same order (metrics and reports use them). "
        "Optional; defaults to the class values.",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_are_ints_or_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, bool):
                    raise ValueError(f"must be integers or strings, got the boolean {item!r}; {_YAML_BOOL_HINT}")
                if isinstance(item, float):
                    raise ValueError(f"must be integers or strings, got the float {item!r}")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_are_strings(cls, value: Any) -> Any:
        return _strings(value, "labels")

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes: duplicate class values in {list(self.classes)}")
        if self.labels and len(self.labels) != len(self.classes):
            raise ValueError(
                f"labels: give one label per class ({len(self.classes)}), got {len(self.labels)}; or leave it out"
            )
        return self


@dataclass(frozen=True, config=_CONFIG)
class ModelSpec:
    """Which estimator to train and under which registry name."""

    name: str = Field(
        pattern=REGISTERED_MODEL_NAME_PATTERN,
        description="Registered model name in MLflow (`models:/<name>@champion`). Letters, digits, `.`, `_`, `-`.",
    )
    estimator: str = Field(
        json_schema_extra={"pattern": ESTIMATOR_PATTERN},
        description="Public scikit-learn classifier class, `sklearn.<module>.<Class>` with <module> one of "
        + ", ".join(ALLOWED_ESTIMATOR_MODULES)
        + " (e.g. `sklearn.ensemble.RandomForestClassifier`).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the estimator's constructor."
    )
    test_size: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Share of the training dataset held out for the metric gates."
    )
    random_state: int = Field(default=42, ge=0, description="Seed of the train/test split.")

    @field_validator("estimator", mode="after")
    @classmethod
    def _allowlisted(cls, value: str) -> str:
        if not _ESTIMATOR_PATTERN.match(value):
            raise ValueError(
                "must be a public scikit-learn classifier path sklearn.<module>.<Class> with <module> one of "
                f"{', '.join(ALLOWED_ESTIMATOR_MODULES)}; got {value!r}"
            )
        return value


@dataclass(frozen=True, config=_CONFIG)
class Thresholds:
    """Offline quality gates for a candidate model."""

    min_accuracy: float = Field(
        default=0.70, ge=0.0, le=1.0, description="Accuracy gate; the `MODEL_MIN_ACCURACY` environment overrides."
    )
    min_macro_f1: float | None = Field(default=None, ge=0.0, le=1.0, description="Macro F1 gate; unset: not checked.")
    regression_tolerance: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="How much accuracy the candidate may trail the champion by, both scored on the model's "
        "evaluation set.",
    )
    min_class_recall: float | None = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Per-class recall floor on the evaluation set: every class present there must reach it. "
        "Unset: not checked.",
    )
    min_predicted_classes: int = Field(
        default=2,
        ge=1,
        description="The candidate must predict at least this many distinct classes on the evaluation set "
        "(a model that answers one class for everything is refused). At most the number of classes.",
    )


@dataclass(frozen=True, config=_CONFIG)
class TrainingWindow:
    """Which accepted rows a training run uses (bounded, so training cost does not grow forever)."""

    max_age_days: float | None = Field(
        default=None,
        gt=0,
        description="Only batches accepted (by the batch gate) in the last N days train. Unset: every accepted "
        "batch, however old.",
    )
    max_rows: int | None = Field(
        default=1_000_000,
        ge=1,
        description="At most this many rows train (after the evaluation rows are excluded), chosen by `sampling`. "
        "Unset (null): every row of the windowed batches.",
    )
    sampling: Literal["newest_first", "hash_sample"] = Field(
        default="newest_first",
        description="How `max_rows` chooses rows. `newest_first`: whole batches, newest accepted first, the last "
        "one cut in file order. `hash_sample`: the `max_rows` rows with the smallest row hash across every "
        "windowed batch (a deterministic, uniform sample: the same data always gives the same rows).",
    )


@dataclass(frozen=True, config=_CONFIG)
class TrainingSpec:
    """How the training dataset is bounded and how many cores fitting uses."""

    window: TrainingWindow = Field(default_factory=TrainingWindow, description="The training window.")
    n_jobs: int | None = Field(
        default=-1,
        description="Cores for estimators that take `n_jobs` (-1: all cores), unless `model.params` sets "
        "`n_jobs`. The registered model predicts with `n_jobs=1` (serving runs its own workers). "
        "Null: leave the estimator's default.",
    )

    @field_validator("n_jobs", mode="after")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be a positive number of cores, -1 (all cores) or null; got 0")
        return value


@dataclass(frozen=True, config=_CONFIG)
class EvaluationSpec:
    """The model's evaluation set: curated rows no model trains on; every model gate scores on it."""

    holdout_percent: float = Field(
        default=20.0,
        gt=0.0,
        le=50.0,
        description="Seed size: this share of the rows accepted before the evaluation set first existed is held "
        "out (the rows with the smallest row hash), at most `max_seed_rows`.",
    )
    max_seed_rows: int = Field(default=10_000, ge=1, description="At most this many seed rows.")


@dataclass(frozen=True, config=_CONFIG)
class ValidationSpec:
    """Batch-level rules beyond the per-column ones."""

    min_rows: int = Field(default=1, ge=1, description="A landed file needs at least this many rows.")
    max_rows: int = Field(default=10_000_000, ge=1, description="A landed file may hold at most this many rows.")
    allow_extra_columns: bool = Field(
        default=False, description="Accept files with columns the spec does not name (they are ignored)."
    )
    min_classes: int = Field(
        default=2,
        ge=1,
        description="A batch must hold at least this many distinct classes (at most the number of classes).",
    )
    min_rows_per_class: int = Field(
        default=1, ge=1, description="Every class present in a batch needs at least this many rows."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ValidationSpec:
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows: {self.min_rows} is greater than max_rows {self.max_rows}")
        return self


@dataclass(frozen=True, config=_CONFIG)
class ReferenceSpec:
    """The reference snapshot written for every registered version."""

    max_rows: int = Field(
        default=100_000, ge=1, description="Row cap of the snapshot; `REFERENCE_DATASET_MAX_ROWS` overrides."
    )


@dataclass(frozen=True, config=_CONFIG)
class DriftSpec:
    """Thresholds for the drift checks (conventional PSI bands by default)."""

    drift_share_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Share of drifted columns at which the dataset counts as drifted."
    )
    psi_warn: float = Field(default=0.1, ge=0.0, description="Prediction PSI from which the check warns.")
    psi_alert: float = Field(default=0.25, ge=0.0, description="Prediction PSI from which the check fails.")
    min_window_rows: int = Field(
        default=30, ge=1, description="A production window with fewer rows is skipped, not judged."
    )
    severity: Literal["WARN", "ERROR"] = Field(
        default="WARN", description="`WARN` alerts, `ERROR` gates (`DRIFT_CHECK_SEVERITY` overrides)."
    )
    min_live_accuracy: float = Field(
        default=0.70, ge=0.0, le=1.0, description="Accuracy on labelled feedback below which the live check fails."
    )

    @field_validator("severity", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _bands(self) -> DriftSpec:
        if self.psi_warn > self.psi_alert:
            raise ValueError(f"psi_warn: {self.psi_warn} is greater than psi_alert {self.psi_alert}")
        return self


@dataclass(frozen=True, config=_CONFIG)
class DatasetSpec:
    """Everything the platform needs to know about one model's dataset: a `spec.yaml`."""

    name: str = Field(
        pattern=DATASET_NAME_PATTERN,
        description="Dataset name (folders, report paths, the `dataset` tag): lowercase letters, digits, `_`.",
    )
    features: tuple[FeatureSpec, ...] = Field(
        min_length=1, description="The input columns, in the order the model sees them."
    )
    target: TargetSpec = Field(description="The label column and its classes.")
    model: ModelSpec = Field(description="The estimator and its registered name.")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="Offline model gates.")
    validation: ValidationSpec = Field(default_factory=ValidationSpec, description="Batch gate rules.")
    drift: DriftSpec = Field(default_factory=DriftSpec, description="Drift and live-accuracy checks.")
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec, description="Reference snapshot settings.")
    bootstrap_file: str | None = Field(
        default=None,
        pattern=BOOTSTRAP_FILE_PATTERN,
        description="CSV landed on a fresh platform home: a file name beside the spec, else in ml_platform/data/. "
        "Optional.",
    )
    description: str = Field(default="", description="Free text shown in the UI and docs.")
    rollout: dict[str, Any] = Field(
        default_factory=dict,
        description="Canary rollout policy overrides (steps, pauses, analysis thresholds, limits); keys and "
        "defaults in docs/canary.md, validated by the rollout policy when a canary starts.",
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Training window and cores.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="The evaluation set every model gate scores on."
    )
    source_path: SkipJsonSchema[Path | None] = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features: duplicate feature names {duplicates}")
        if self.target.name in names:
            raise ValueError(f"target.name: {self.target.name!r} is also listed as a feature")
        if not 1 <= self.validation.min_classes <= len(self.target.classes):
            raise ValueError(
                f"validation.min_classes: must be between 1 and {len(self.target.classes)} (the number of "
                f"target classes), got {self.validation.min_classes}"
            )
        if self.thresholds.min_predicted_classes > len(self.target.classes):
            raise ValueError(
                f"thresholds.min_predicted_classes: must be at most {len(self.target.classes)} (the number of "
                f"target classes), got {self.thresholds.min_predicted_classes}"
            )
        return self

    @property
    def reference_max_rows(self) -> int:
        return self.reference.max_rows

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        return [*self.feature_names, self.target.name]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features if f.is_numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if not f.is_numeric]

    def feature(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def min_accuracy(self) -> float:
        """The accuracy gate; ``MODEL_MIN_ACCURACY`` overrides the spec."""
        override = os.environ.get("MODEL_MIN_ACCURACY", "").strip()
        if override:
            try:
                return float(override)
            except ValueError as exc:
                raise SpecError(f"MODEL_MIN_ACCURACY must be a number, got {override!r}") from exc
        return self.thresholds.min_accuracy

    def bootstrap_path(self) -> Path | None:
        if not self.bootstrap_file:
            return None
        if self.source_path is not None:
            candidate = (self.source_path.parent / self.bootstrap_file).resolve()
            if candidate.exists():
                return candidate
        return BUNDLED_DATA_DIR / self.bootstrap_file


@cache
def _adapter() -> TypeAdapter[DatasetSpec]:
    return TypeAdapter(DatasetSpec)


@cache
def json_schema() -> dict[str, Any]:
    """The JSON Schema of a ``spec.yaml`` (published as ``docs/spec.schema.json``)."""
    schema = _adapter().json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "ml_platform dataset spec (spec.yaml)",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _schema_node(loc: tuple[int | str, ...]) -> dict[str, Any] | None:
    """The JSON Schema object at ``loc`` (to list the keys allowed there)."""
    schema = json_schema()
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while True:
            if "$ref" in node:
                node = defs[node["$ref"].rsplit("/", 1)[-1]]
            elif "anyOf" in node:
                node = next((n for n in node["anyOf"] if n.get("type") != "null"), node["anyOf"][0])
            else:
                return node

    node = resolve(schema)
    for part in loc:
        if isinstance(part, int):
            items = node.get("items")
            if not isinstance(items, dict):
                return None
            node = resolve(items)
        else:
            props = node.get("properties", {})
            if part not in props:
                return None
            node = resolve(props[part])
    return node


def _describe(error: Any, raw: Any) -> tuple[str, str]:
    """One pydantic error as ``(key path, readable message with what is allowed)``."""
    loc = tuple(error["loc"])
    kind = error["type"]
    message = str(error["msg"])
    given = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        message = str(ctx.get("error", message))
        # cross-field validators start their message with the key they judge, relative to loc
        head = re.match(r"^([a-z_][a-z0-9_.]*): (.*)$", message, re.DOTALL)
        if head and _schema_node((*loc, *head.group(1).split("."))) is not None:
            loc = (*loc, *head.group(1).split("."))
            message = head.group(2)
    elif kind == "missing":
        parent = _schema_node(loc[:-1])
        what = (parent or {}).get("properties", {}).get(str(loc[-1]), {}).get("description", "")
        message = "missing required key" + (f" ({what})" if what else "")
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = _schema_node(loc[:-1])
        allowed = sorted((parent or {}).get("properties", {}))
        message = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    elif kind == "literal_error":
        message = f"must be one of {ctx.get('expected', '')}; got {given!r}"
    elif kind == "string_pattern_mismatch":
        message = f"must match {ctx.get('pattern')}; got {given!r}"
    elif kind in ("too_short", "too_long"):
        if loc == ("target", "classes"):
            message = f"a classification target needs at least two classes; got {list(given or [])}"
        else:
            message = f"{message}; got {given!r}"
    elif kind == "dataclass_type" or kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{message}; got {given!r}"
    else:
        message = f"{message}; got {given!r}" if given is not None and not isinstance(given, dict) else message
    path = _key_path(loc) or "(top level)"
    feature_name = _feature_name(loc, raw)
    if feature_name:
        path = f"{path} (feature {feature_name!r})"
    return path, message


def _feature_name(loc: tuple[int | str, ...], raw: Any) -> str | None:
    if len(loc) >= 2 and loc[0] == "features" and isinstance(loc[1], int) and isinstance(raw, dict):
        features = raw.get("features")
        if isinstance(features, list) and 0 <= loc[1] < len(features) and isinstance(features[loc[1]], dict):
            name = features[loc[1]].get("name")
            return str(name) if name is not None else None
    return None


def spec_error(exc: ValidationError, raw: Any, source_path: Path | None) -> SpecError:
    """One readable :class:`SpecError` for every problem pydantic found."""
    problems = [_describe(error, raw) for error in exc.errors(include_url=False)]
    where = str(source_path) if source_path is not None else "spec"
    if len(problems) == 1:
        path, message = problems[0]
        text = f"{where}: {path}: {message}"
    else:
        lines = "\n".join(f"  - {path}: {message}" for path, message in problems)
        text = f"{where}: {len(problems)} problems:\n{lines}"
    return SpecError(text, problems, source_path)


def parse_spec(raw: dict[str, Any], source_path: Path | None = None) -> DatasetSpec:
    """Build a :class:`DatasetSpec` from the parsed YAML mapping, validating it."""
    where = str(source_path) if source_path is not None else "spec"
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a dataset spec must be a YAML mapping, got {type(raw).__name__}", source=source_path)
    if "source_path" in raw:
        allowed = ", ".join(sorted(json_schema()["properties"]))
        raise SpecError(f"{where}: source_path: unknown key; allowed here: {allowed}", source=source_path)
    try:
        return _adapter().validate_python({**raw, "source_path": source_path})
    except ValidationError as exc:
        raise spec_error(exc, raw, source_path) from None


def load_spec_file(path: Path) -> DatasetSpec:
    """Parse and validate one spec file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}", source=path) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}", source=path) from exc
    return parse_spec(raw, source_path=path.resolve())


def load_spec(name: str | None = None) -> DatasetSpec:
    """The spec of a model of the catalog (default: ``ML_PLATFORM_MODEL`` or the default model).

    ``name`` may also be a path to a spec YAML file (tests and one-off checks).
    """
    if name is not None and Path(name).suffix in (".yaml", ".yml"):
        return load_spec_file(Path(name))
    from ml_platform.catalog import CatalogError, get_model

    try:
        return get_model(name).spec
    except CatalogError as exc:
        raise SpecError(str(exc)) from exc


def schema_text() -> str:
    """The JSON Schema as committed in ``docs/spec.schema.json``."""
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m ml_platform.spec --schema`` prints the JSON Schema; ``... FILE...`` validates spec files."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ml_platform.spec", description=main.__doc__)
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema of spec.yaml")
    parser.add_argument("files", nargs="*", type=Path, help="spec files to validate")
    args = parser.parse_args(argv)
    if args.schema:
        sys.stdout.write(schema_text())
        return 0
    failed = 0
    for path in args.files:
        try:
            spec = load_spec_file(path)
        except SpecError as exc:
            failed += 1
            print(exc, file=sys.stderr)
        else:
            print(f"{path}: ok ({spec.name}: {len(spec.features)} features, model {spec.model.name})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
