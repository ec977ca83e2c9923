"""Model runtimes: the ONNX fast path and the scikit-learn fallback.

A runtime turns validated rows into spec class indices and (when the model has
them) class probabilities in spec class order. The ONNX runtime feeds numpy
straight into onnxruntime (float32, spec feature order, one intra-op thread per
worker so workers and the API process do not fight over cores). The sklearn
runtime loads ``model.skops`` with :func:`ml_platform.ml.safe_load.load_skops_model`
(the platform's fixed type allowlist; the artifact's ``MLmodel`` is never read,
so a pickle is never loaded) and calls ``predict`` (the label authority) and
``predict_proba``. Before either runtime opens a file, :func:`load_runtime`
re-checks it against the sha256 the API process verified at download.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ml_platform.ml.safe_load import SKOPS_RELPATH, ModelRefused, check_hashes, load_skops_model
from ml_platform.spec import DatasetSpec
from serving.registry import ModelBundle

log = logging.getLogger(__name__)

PROBABILITY_DECIMALS = 5  # float32 sums over many trees are exact to ~1e-6


class ModelLoadError(RuntimeError):
    """A model version cannot be loaded or does not match its dataset spec."""


@dataclass(frozen=True)
class Prediction:
    """Model output for a batch, in spec terms."""

    class_index: np.ndarray  # (N,) uint16 index into spec.target.classes
    probabilities: np.ndarray | None  # (N, n_classes) float64 in spec class order, rounded


class ModelRuntime(Protocol):
    """What a worker needs from a loaded model."""

    kind: str
    bundle: ModelBundle
    spec: DatasetSpec

    def predict(self, rows: np.ndarray | list[tuple[Any, ...]]) -> Prediction: ...


class ClassMapper:
    """Maps model class values (and probability columns) to spec class indices."""

    def __init__(self, spec: DatasetSpec, model_classes: list[Any]) -> None:
        spec_index = {str(v): i for i, v in enumerate(spec.target.classes)}
        unknown = [c for c in model_classes if str(c) not in spec_index]
        if unknown:
            raise ModelLoadError(f"model classes {unknown} are not in the spec's classes {list(spec.target.classes)}")
        self.n_classes = len(spec.target.classes)
        self.model_to_spec = np.array([spec_index[str(c)] for c in model_classes], dtype=np.intp)
        self.identity = self.model_to_spec.tolist() == list(range(self.n_classes))
        self._lookup = {c: spec_index[str(c)] for c in model_classes}
        self._int_lut: np.ndarray | None = None
        if all(isinstance(c, (int, np.integer)) and 0 <= int(c) < 1_000_000 for c in model_classes):
            lut = np.full(max(int(c) for c in model_classes) + 1, -1, dtype=np.intp)
            for c in model_classes:
                lut[int(c)] = spec_index[str(c)]
            self._int_lut = lut

    def indices(self, labels: np.ndarray) -> np.ndarray:
        """Spec class index of each predicted label."""
        labels = np.asarray(labels).reshape(-1)
        if self._int_lut is not None and labels.dtype.kind in "iu":
            return self._int_lut[labels].astype(np.uint16)
        return np.fromiter((self._lookup[v] for v in labels.tolist()), dtype=np.uint16, count=len(labels))

    def probabilities(self, probs: np.ndarray) -> np.ndarray:
        """Probability columns reordered to spec class order, as rounded float64."""
        probs = np.asarray(probs, dtype=np.float64)
        if not self.identity:
            ordered = np.zeros((probs.shape[0], self.n_classes))
            ordered[:, self.model_to_spec] = probs
            probs = ordered
        return np.round(probs, PROBABILITY_DECIMALS)


class OnnxRuntime:
    """Serves the verified ONNX graph with onnxruntime."""

    kind = "onnx"

    def __init__(self, bundle: ModelBundle, spec: DatasetSpec) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(bundle.onnx_path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if len(inputs) != 1 or width not in (None, len(spec.feature_names)):
            raise ModelLoadError(
                f"{bundle.uri}: ONNX input {inputs[0].shape} does not match {len(spec.feature_names)} features"
            )
        self.input_name = inputs[0].name
        outputs = self.session.get_outputs()
        self.has_proba = len(outputs) > 1
        # skl2onnx orders probability columns like sklearn's classes_: the sorted training labels. Training
        # labels are a subset of the spec's classes, so equal width means exactly the spec's classes, sorted.
        width = outputs[1].shape[1] if self.has_proba and len(outputs[1].shape) == 2 else None
        if isinstance(width, int) and width != len(spec.target.classes):
            raise ModelLoadError(f"{bundle.uri}: {width} probability columns for {len(spec.target.classes)} classes")
        self.mapper = ClassMapper(spec, sorted(spec.target.classes))

    def predict(self, rows: np.ndarray | list[tuple[Any, ...]]) -> Prediction:
        matrix = np.asarray(rows, dtype=np.float32)
        outputs = self.session.run(None, {self.input_name: matrix})
        probs = self.mapper.probabilities(outputs[1]) if self.has_proba else None
        return Prediction(self.mapper.indices(outputs[0]), probs)


class SklearnRuntime:
    """Serves the skops-serialised scikit-learn model (the fallback when there is no verified ONNX)."""

    kind = "sklearn"

    def __init__(self, bundle: ModelBundle, spec: DatasetSpec) -> None:
        self.bundle = bundle
        self.spec = spec
        self.model = load_skops_model(Path(bundle.local_dir) / SKOPS_RELPATH, bundle.version)
        classes = getattr(self.model, "classes_", None)
        if classes is None:
            raise ModelLoadError(f"{bundle.uri}: the model is not a classifier (no classes_)")
        self.mapper = ClassMapper(spec, list(classes.tolist()))
        self.has_proba = hasattr(self.model, "predict_proba")

    def _frame(self, rows: np.ndarray | list[tuple[Any, ...]]) -> Any:
        import pandas as pd

        frame = pd.DataFrame(list(rows) if not isinstance(rows, np.ndarray) else rows, columns=self.spec.feature_names)
        for name in self.spec.numeric_features:
            frame[name] = frame[name].astype("float64")
        for name in self.spec.categorical_features:
            frame[name] = frame[name].astype(object)
        return frame

    def predict(self, rows: np.ndarray | list[tuple[Any, ...]]) -> Prediction:
        frame = self._frame(rows)
        labels = self.model.predict(frame)
        probs = self.mapper.probabilities(self.model.predict_proba(frame)) if self.has_proba else None
        return Prediction(self.mapper.indices(labels), probs)


def load_runtime(bundle: ModelBundle, spec: DatasetSpec, preference: str = "auto") -> ModelRuntime:
    """ONNX when the version has a verified graph (and ``preference`` allows it), else sklearn.

    Refuses (:class:`ModelLoadError`) a bundle whose files no longer match the hashes verified at download.
    """
    if "sha256.model_skops" not in bundle.artifact_sha256:
        raise ModelLoadError(f"version {bundle.version} refused: no verified artifact hashes")
    try:
        check_hashes(bundle.version, Path(bundle.local_dir), bundle.artifact_sha256)
    except ModelRefused as exc:
        raise ModelLoadError(str(exc)) from exc
    if preference == "auto" and bundle.onnx_verified:
        try:
            return OnnxRuntime(bundle, spec)
        except Exception as exc:  # a broken graph must not take the version down: sklearn still works
            log.warning("%s: ONNX graph unusable (%s); falling back to sklearn", bundle.uri, exc)
    try:
        return SklearnRuntime(bundle, spec)
    except ModelLoadError:
        raise
    except ModelRefused as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:
        raise ModelLoadError(f"{bundle.uri}: cannot load the sklearn model: {type(exc).__name__}: {exc}") from exc
