"""Fit and evaluate the estimator a dataset spec names.

Pure functions over pandas frames: no Dagster, no MLflow. scikit-learn is
imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ml_platform.spec import DatasetSpec, SpecError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class TrainingSplit:
    """Deterministic train/test split of the training dataset."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


@dataclass
class Evaluation:
    """Held-out metrics of a fitted model."""

    accuracy: float
    macro_f1: float
    per_class_precision: dict[str, float]
    per_class_recall: dict[str, float]
    confusion_matrix: list[list[int]]
    class_labels: list[str]
    test_rows: int
    extra: dict[str, Any] = field(default_factory=dict)

    def flat_metrics(self) -> dict[str, float]:
        """Metrics as a flat mapping suitable for ``mlflow.log_metrics``."""
        metrics = {"accuracy": self.accuracy, "macro_f1": self.macro_f1}
        for label, value in self.per_class_precision.items():
            metrics[f"precision_{label}"] = value
        for label, value in self.per_class_recall.items():
            metrics[f"recall_{label}"] = value
        return metrics


def resolve_estimator_class(path: str) -> type:
    """Import the spec's estimator class and make sure it is a scikit-learn classifier.

    Only public classes of :data:`ml_platform.spec.ALLOWED_ESTIMATOR_MODULES` that subclass
    ``BaseEstimator`` and ``ClassifierMixin`` and that ``sklearn.base.is_classifier`` accepts pass;
    anything else (a ``joblib.Memory``, a socket listener, a regressor, a transformer) is a
    :class:`SpecError` before any object is built from the spec's params.
    """
    from sklearn.base import BaseEstimator, ClassifierMixin, is_classifier

    from ml_platform.spec import ALLOWED_ESTIMATOR_MODULES

    module_name, _, class_name = path.rpartition(".")
    prefixes = tuple(f"sklearn.{m}" for m in ALLOWED_ESTIMATOR_MODULES)
    if module_name not in prefixes or not class_name[:1].isupper():
        raise SpecError(f"estimator {path!r} is not a public class of {', '.join(prefixes)}")
    try:
        module = importlib.import_module(module_name)
        estimator_class = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"cannot import estimator {path!r}: {exc}") from exc
    defined_in = getattr(estimator_class, "__module__", "") or ""
    if not isinstance(estimator_class, type) or not defined_in.startswith(module_name):
        raise SpecError(f"estimator {path!r} is not a class defined in {module_name}")
    if not issubclass(estimator_class, BaseEstimator) or not issubclass(estimator_class, ClassifierMixin):
        raise SpecError(f"estimator {path!r} is not a scikit-learn classifier")
    try:
        is_clf = is_classifier(estimator_class())  # default params only: safe for these classes
    except Exception as exc:
        raise SpecError(f"estimator {path!r} cannot be built with default parameters: {exc}") from exc
    if not is_clf:
        raise SpecError(f"estimator {path!r} is not a scikit-learn classifier")
    return estimator_class


def feature_frame(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """The model's input columns in spec order, numeric features as float64."""
    features = frame[spec.feature_names].copy()
    for name in spec.numeric_features:
        features[name] = features[name].astype("float64")
    for name in spec.categorical_features:
        features[name] = features[name].astype("string").astype(object)
    return features


def split_dataset(frame: pd.DataFrame, spec: DatasetSpec) -> TrainingSplit:
    """Stratified, seeded split so reruns on the same data give the same model."""
    from sklearn.model_selection import train_test_split

    features = feature_frame(frame, spec)
    target = frame[spec.target.name]
    counts = target.value_counts()
    stratify = target if len(counts) > 1 and counts.min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        target,
        test_size=spec.model.test_size,
        random_state=spec.model.random_state,
        stratify=stratify,
    )
    return TrainingSplit(x_train, x_test, y_train, y_test)


def build_estimator(spec: DatasetSpec) -> Any:
    """The spec's estimator, wrapped with one-hot encoding when there are categorical features."""
    estimator = resolve_estimator_class(spec.model.estimator)(**spec.model.params)
    if not spec.categorical_features:
        return estimator
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encoder = ColumnTransformer(
        [
            ("numeric", "passthrough", spec.numeric_features),
            (
                "categorical",
                OneHotEncoder(
                    categories=[list(spec.feature(n).categories) for n in spec.categorical_features],
                    handle_unknown="ignore",
                ),
                spec.categorical_features,
            ),
        ]
    )
    return Pipeline([("encode", encoder), ("estimator", estimator)])


def _n_jobs_param(model: Any) -> str | None:
    """The ``n_jobs`` parameter name of the estimator (inside a pipeline too), if it takes one."""
    params = model.get_params(deep=True)
    return next((name for name in ("n_jobs", "estimator__n_jobs") if name in params), None)


def fit_model(split: TrainingSplit, spec: DatasetSpec) -> Any:
    """Fit the spec's estimator on the training split, on every core unless the spec says otherwise.

    ``training.n_jobs`` (default -1: all cores) applies to estimators that take ``n_jobs`` and whose
    ``model.params`` do not set it. The fitted model is then set back to ``n_jobs=1`` so the
    registered model predicts single-threaded: serving scales with its own workers.
    """
    model = build_estimator(spec)
    param = _n_jobs_param(model)
    chosen = spec.training.n_jobs
    if param is None or "n_jobs" in spec.model.params or chosen is None:
        model.fit(split.x_train, split.y_train)
        return model
    model.set_params(**{str(param): chosen})
    model.fit(split.x_train, split.y_train)
    model.set_params(**{str(param): 1})
    return model


@contextmanager
def all_cores(model: Any, spec: DatasetSpec) -> Iterator[Any]:
    """Within the block the model predicts on ``training.n_jobs`` cores (e.g. to verify ONNX on every
    training row); afterwards it is single-threaded again, as it is registered."""
    param = _n_jobs_param(model)
    if param is None or "n_jobs" in spec.model.params or spec.training.n_jobs is None:
        yield model
        return
    model.set_params(**{str(param): spec.training.n_jobs})
    try:
        yield model
    finally:
        model.set_params(**{str(param): 1})


def class_label(spec: DatasetSpec, value: Any) -> str:
    """Readable name of a class value (``labels`` from the spec where given)."""
    classes = list(spec.target.classes)
    index = classes.index(value) if value in classes else len(spec.target.labels)
    return spec.target.labels[index] if index < len(spec.target.labels) else str(value)


def evaluate_model(model: Any, split: TrainingSplit, spec: DatasetSpec) -> Evaluation:
    """Accuracy, macro F1, per-class precision/recall and the confusion matrix on the test split."""
    return evaluate_predictions(split.y_test, model.predict(split.x_test), spec)


def evaluate_on_frame(model: Any, frame: pd.DataFrame, spec: DatasetSpec) -> Evaluation:
    """The same metrics on a labelled frame (e.g. the evaluation set)."""
    return evaluate_predictions(frame[spec.target.name], model.predict(feature_frame(frame, spec)), spec)


def evaluate_predictions(y_true: Any, predictions: Any, spec: DatasetSpec) -> Evaluation:
    """Metrics of ``predictions`` against ``y_true`` over the spec's classes."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    classes = list(spec.target.classes)
    present = set(y_true.tolist() if hasattr(y_true, "tolist") else y_true)
    precision, recall, _, _ = precision_recall_fscore_support(y_true, predictions, labels=classes, zero_division=0)
    labels = [class_label(spec, c) for c in classes]
    matrix = confusion_matrix(y_true, predictions, labels=classes).tolist()
    return Evaluation(
        accuracy=float(accuracy_score(y_true, predictions)),
        macro_f1=float(f1_score(y_true, predictions, labels=classes, average="macro", zero_division=0)),
        per_class_precision={label: float(p) for label, p in zip(labels, precision, strict=True)},
        per_class_recall={label: float(r) for label, r in zip(labels, recall, strict=True)},
        confusion_matrix=matrix,
        class_labels=labels,
        test_rows=len(y_true),
        extra={
            "predicted_classes": sorted({class_label(spec, p) for p in predictions}),
            "classes_present": [class_label(spec, c) for c in classes if c in present],
        },
    )


def confusion_matrix_markdown(evaluation: Evaluation) -> str:
    """The confusion matrix as a markdown table (rows: actual, columns: predicted)."""
    header = "| actual \\ predicted | " + " | ".join(evaluation.class_labels) + " |"
    rule = "|---" * (len(evaluation.class_labels) + 1) + "|"
    rows = [
        f"| {label} | " + " | ".join(str(v) for v in row) + " |"
        for label, row in zip(evaluation.class_labels, evaluation.confusion_matrix, strict=True)
    ]
    return "\n".join([header, rule, *rows])
