"""The declarative dataset spec: one YAML file per dataset drives everything.

From a spec come the GX expectation suite, the training columns, the MLflow
signature, the serving request schema and the drift column mapping. Adding a
tabular classification dataset means writing a spec, not code.

Loading a spec needs only PyYAML; nothing heavy is imported here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


BUNDLED_DATA_DIR = Path(__file__).parent / "data"
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
_ESTIMATOR_PATTERN = re.compile(rf"^sklearn\.({'|'.join(ALLOWED_ESTIMATOR_MODULES)})\.[A-Z][A-Za-z0-9]*$")

FeatureType = Literal["float", "int", "category"]


class SpecError(ValueError):
    """A dataset spec is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class FeatureSpec:
    """One input column: its type and what values are valid."""

    name: str
    type: FeatureType
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    description: str = ""

    @property
    def is_numeric(self) -> bool:
        return self.type in ("float", "int")


@dataclass(frozen=True)
class TargetSpec:
    """The label column and its class set."""

    name: str
    classes: tuple[Any, ...]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """Which estimator to train and under which registry name."""

    name: str
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    test_size: float = 0.2
    random_state: int = 42


@dataclass(frozen=True)
class Thresholds:
    """Offline quality gates for a candidate model."""

    min_accuracy: float = 0.70
    min_macro_f1: float | None = None
    regression_tolerance: float = 0.02


@dataclass(frozen=True)
class ValidationSpec:
    """Batch-level rules beyond the per-column ones."""

    min_rows: int = 1
    max_rows: int = 10_000_000
    allow_extra_columns: bool = False
    min_classes: int = 2  # a batch must hold at least this many distinct classes
    min_rows_per_class: int = 1  # and at least this many rows of every class it holds


@dataclass(frozen=True)
class DriftSpec:
    """Thresholds for the drift checks (conventional PSI bands by default)."""

    drift_share_threshold: float = 0.5
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    min_window_rows: int = 30
    severity: Literal["WARN", "ERROR"] = "WARN"
    min_live_accuracy: float = 0.70


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the platform needs to know about one dataset."""

    name: str
    features: tuple[FeatureSpec, ...]
    target: TargetSpec
    model: ModelSpec
    thresholds: Thresholds
    validation: ValidationSpec
    drift: DriftSpec
    bootstrap_file: str | None = None
    description: str = ""
    reference_max_rows: int = 100_000
    source_path: Path | None = None

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


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise SpecError(f"{where}: missing required key {key!r}")
    return mapping[key]


def _parse_feature(raw: dict[str, Any], index: int) -> FeatureSpec:
    where = f"features[{index}]"
    name = str(_require(raw, "name", where))
    ftype = str(raw.get("type", "float"))
    if ftype not in ("float", "int", "category"):
        raise SpecError(f"{where} ({name}): type must be float, int or category, got {ftype!r}")
    categories = tuple(str(c) for c in raw.get("categories") or ())
    if ftype == "category" and not categories:
        raise SpecError(f"{where} ({name}): a category feature needs a 'categories' list")
    low, high = raw.get("min"), raw.get("max")
    if low is not None and high is not None and float(low) > float(high):
        raise SpecError(f"{where} ({name}): min {low} is greater than max {high}")
    return FeatureSpec(
        name=name,
        type=ftype,  # type: ignore[arg-type]
        min=None if low is None else float(low),
        max=None if high is None else float(high),
        categories=categories,
        description=str(raw.get("description", "")),
    )


def parse_spec(raw: dict[str, Any], source_path: Path | None = None) -> DatasetSpec:
    """Build a :class:`DatasetSpec` from the parsed YAML mapping, validating it."""
    if not isinstance(raw, dict):
        raise SpecError("a dataset spec must be a YAML mapping")
    name = str(_require(raw, "name", "spec"))
    raw_features = _require(raw, "features", "spec")
    if not isinstance(raw_features, list) or not raw_features:
        raise SpecError("spec: 'features' must be a non-empty list")
    features = tuple(_parse_feature(f, i) for i, f in enumerate(raw_features))
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise SpecError(f"spec: duplicate feature names in {names}")

    raw_target = _require(raw, "target", "spec")
    classes = tuple(_require(raw_target, "classes", "target"))
    if len(classes) < 2:
        raise SpecError("target: a classification target needs at least two classes")
    target = TargetSpec(
        name=str(_require(raw_target, "name", "target")),
        classes=classes,
        labels=tuple(str(label) for label in raw_target.get("labels") or ()),
    )
    if target.name in names:
        raise SpecError(f"target {target.name!r} is also listed as a feature")

    raw_model = _require(raw, "model", "spec")
    estimator = str(_require(raw_model, "estimator", "model"))
    if not _ESTIMATOR_PATTERN.match(estimator):
        raise SpecError(
            f"model.estimator must be a public scikit-learn classifier path sklearn.<module>.<Class> with "
            f"<module> one of {', '.join(ALLOWED_ESTIMATOR_MODULES)}; got {estimator!r}"
        )
    model = ModelSpec(
        name=str(_require(raw_model, "name", "model")),
        estimator=estimator,
        params=dict(raw_model.get("params") or {}),
        test_size=float(raw_model.get("test_size", 0.2)),
        random_state=int(raw_model.get("random_state", 42)),
    )
    raw_thresholds = raw.get("thresholds") or {}
    thresholds = Thresholds(
        min_accuracy=float(raw_thresholds.get("min_accuracy", 0.70)),
        min_macro_f1=(None if raw_thresholds.get("min_macro_f1") is None else float(raw_thresholds["min_macro_f1"])),
        regression_tolerance=float(raw_thresholds.get("regression_tolerance", 0.02)),
    )
    raw_validation = raw.get("validation") or {}
    validation = ValidationSpec(
        min_rows=int(raw_validation.get("min_rows", 1)),
        max_rows=int(raw_validation.get("max_rows", 10_000_000)),
        allow_extra_columns=bool(raw_validation.get("allow_extra_columns", False)),
        min_classes=int(raw_validation.get("min_classes", 2)),
        min_rows_per_class=int(raw_validation.get("min_rows_per_class", 1)),
    )
    if not 1 <= validation.min_classes <= len(classes):
        raise SpecError(f"validation.min_classes must be between 1 and {len(classes)}, got {validation.min_classes}")
    if validation.min_rows_per_class < 1:
        raise SpecError(f"validation.min_rows_per_class must be at least 1, got {validation.min_rows_per_class}")
    raw_drift = raw.get("drift") or {}
    severity = str(raw_drift.get("severity", "WARN")).upper()
    if severity not in ("WARN", "ERROR"):
        raise SpecError(f"drift.severity must be WARN or ERROR, got {severity!r}")
    drift = DriftSpec(
        drift_share_threshold=float(raw_drift.get("drift_share_threshold", 0.5)),
        psi_warn=float(raw_drift.get("psi_warn", 0.1)),
        psi_alert=float(raw_drift.get("psi_alert", 0.25)),
        min_window_rows=int(raw_drift.get("min_window_rows", 30)),
        severity=severity,  # type: ignore[arg-type]
        min_live_accuracy=float(raw_drift.get("min_live_accuracy", 0.70)),
    )
    return DatasetSpec(
        name=name,
        features=features,
        target=target,
        model=model,
        thresholds=thresholds,
        validation=validation,
        drift=drift,
        bootstrap_file=raw.get("bootstrap_file"),
        description=str(raw.get("description", "")),
        reference_max_rows=int((raw.get("reference") or {}).get("max_rows", 100_000)),
        source_path=source_path,
    )


def load_spec_file(path: Path) -> DatasetSpec:
    """Parse and validate one spec file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
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
