"""Load registered model versions without trusting what the artifacts say about themselves.

A model version in the registry is untrusted input: anyone who can write to the
registry or the artifact store can put a pickle behind an alias, rewrite the
``MLmodel`` file to say ``serialization_format: pickle``, or list their own
"trusted" skops types. Everything that loads a model (serving workers, the
champion comparison, the smoke test, the reference snapshot) goes through this
module, which enforces three rules fixed in code:

1. **Format.** Only ``extra_files/model.onnx`` (onnxruntime) or ``model.skops``
   loaded with :func:`skops.io.load` and :data:`TRUSTED_SKOPS_TYPES`. The
   ``MLmodel`` file is never consulted; pickle and cloudpickle are never read.
2. **Integrity.** The sha256 of each model file must equal the tag recorded at
   registration (:data:`SHA256_TAGS`); a version without the tags is refused.
   Tree structures are bounds-checked after loading (skops notes that a crafted
   ``sklearn.tree._tree.Tree`` can make ``predict`` read out of bounds).
3. **Gates.** Where asked, the version must carry ``validation_status=passed``
   and a ``passed`` tag for every blocking model gate (:func:`gate_refusal`).

Refusals raise :class:`ModelRefused` whose message is short and safe to show in
``/health`` ("version 7 refused: artifact hash mismatch (model.skops)").
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_platform.ml.registry import BLOCKING_MODEL_GATES, VALIDATION_STATUS_TAG, gate_tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

SKOPS_RELPATH = "model.skops"
ONNX_RELPATH = "extra_files/model.onnx"
SHA256_TAGS: dict[str, str] = {SKOPS_RELPATH: "sha256.model_skops", ONNX_RELPATH: "sha256.model_onnx"}

# Types outside skops' own default-trusted set that the platform's estimators need (see
# ml_platform.spec.ALLOWED_ESTIMATOR_MODULES). Fixed here, never read from an artifact.
TRUSTED_SKOPS_TYPES: tuple[str, ...] = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.gaussian_process._gpc._BinaryGaussianProcessClassifierLaplace",
    "sklearn.gaussian_process.kernels.ConstantKernel",
    "sklearn.gaussian_process.kernels.Product",
    "sklearn.gaussian_process.kernels.Sum",
    "sklearn.gaussian_process.kernels.RBF",
    "sklearn.gaussian_process.kernels.WhiteKernel",
)
_HASH_CHUNK = 1 << 20


class ModelRefused(RuntimeError):
    """A model version the platform will not load; the message is safe to show to clients."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_hashes(model_dir: Path) -> dict[str, str]:
    """The sha256 tags of the model files present in a downloaded model folder."""
    return {tag: sha256_file(model_dir / rel) for rel, tag in SHA256_TAGS.items() if (model_dir / rel).is_file()}


def gate_refusal(tags: Mapping[str, str]) -> str | None:
    """Why a version has not passed the blocking model gates (None when it has)."""
    status = tags.get(VALIDATION_STATUS_TAG)
    if status != "passed":
        return f"it has not passed the model gates ({VALIDATION_STATUS_TAG}={status or 'unset'})"
    missing = [gate for gate in BLOCKING_MODEL_GATES if tags.get(gate_tag(gate)) != "passed"]
    if missing:
        return f"gate {', '.join(missing)} has not passed"
    return None


def verify_model_dir(version: str, model_dir: Path, tags: Mapping[str, str], *, require_gates: bool) -> dict[str, str]:
    """Check gates (optionally), formats and hashes of a downloaded version; return the verified hashes.

    Raises :class:`ModelRefused` naming the version and the reason.
    """
    if require_gates and (reason := gate_refusal(tags)):
        raise ModelRefused(f"version {version} refused: {reason}")
    if not (model_dir / SKOPS_RELPATH).is_file():
        raise ModelRefused(
            f"version {version} refused: no {SKOPS_RELPATH} (only skops and ONNX models are loaded, never pickle)"
        )
    verified = {}
    for rel, tag in SHA256_TAGS.items():
        path = model_dir / rel
        if not path.is_file():
            continue
        expected = tags.get(tag)
        if not expected:
            raise ModelRefused(f"version {version} refused: no recorded sha256 for {Path(rel).name}")
        if sha256_file(path) != expected:
            raise ModelRefused(f"version {version} refused: artifact hash mismatch ({Path(rel).name})")
        verified[tag] = expected
    return verified


def check_hashes(version: str, model_dir: Path, expected: Mapping[str, str]) -> None:
    """Re-check files against hashes verified earlier (a worker, just before it loads)."""
    for rel, tag in SHA256_TAGS.items():
        path = model_dir / rel
        if tag in expected and (not path.is_file() or sha256_file(path) != expected[tag]):
            raise ModelRefused(f"version {version} refused: artifact hash mismatch ({Path(rel).name})")


def load_skops_model(path: Path, version: str = "?") -> Any:
    """Load a skops file with the allowlist fixed in code, then bounds-check its tree structures."""
    import skops.io

    try:
        untrusted = set(skops.io.get_untrusted_types(file=path))
    except Exception as exc:
        raise ModelRefused(f"version {version} refused: {Path(path).name} is not a valid skops file") from exc
    refused = sorted(untrusted - set(TRUSTED_SKOPS_TYPES))
    if refused:
        shown = ", ".join(refused[:5])
        raise ModelRefused(f"version {version} refused: untrusted types in {Path(path).name}: {shown}"[:300])
    try:
        model = skops.io.load(path, trusted=list(TRUSTED_SKOPS_TYPES))
    except Exception as exc:
        raise ModelRefused(
            f"version {version} refused: {Path(path).name} does not load ({type(exc).__name__})"
        ) from exc
    problem = structure_problem(model)
    if problem:
        raise ModelRefused(f"version {version} refused: malformed model ({problem})")
    return model


# -- structure checks -------------------------------------------------------------------------


def _children(obj: Any) -> Iterator[Any]:
    from sklearn.base import BaseEstimator

    values = vars(obj).values() if isinstance(obj, BaseEstimator) else ()
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from value
        elif getattr(getattr(value, "dtype", None), "kind", None) == "O":
            yield from value.ravel().tolist()
        else:
            yield value


def _tree_problem(tree: Any, n_features: int | None) -> str | None:
    import numpy as np

    n = int(tree.node_count)
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    if len(left) != n or len(right) != n or len(feature) != n or tree.value.shape[0] != n:
        return "tree arrays disagree with node_count"
    index = np.arange(n)
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        return "tree node with one child"
    inner = ~leaf
    # sklearn stores children after their parent: bounded and acyclic
    if np.any(
        (left[inner] <= index[inner]) | (left[inner] >= n) | (right[inner] <= index[inner]) | (right[inner] >= n)
    ):
        return "tree child index out of range"
    width = int(tree.n_features) if n_features is None else min(int(tree.n_features), n_features)
    if np.any((feature[inner] < 0) | (feature[inner] >= width)):
        return "tree feature index out of range"
    return None


def _predictor_problem(predictor: Any, n_features: int | None) -> str | None:
    import numpy as np

    nodes = predictor.nodes
    n = len(nodes)
    inner = nodes["is_leaf"] == 0
    index = np.arange(n)
    for side in ("left", "right"):
        child = nodes[side][inner].astype(np.int64)
        if np.any((child <= index[inner]) | (child >= n)):
            return "tree child index out of range"
    features = nodes["feature_idx"][inner].astype(np.int64)
    if np.any(features < 0) or (n_features is not None and np.any(features >= n_features)):
        return "tree feature index out of range"
    categorical = inner & (nodes["is_categorical"] != 0)
    bitsets = min(len(predictor.raw_left_cat_bitsets), len(predictor.binned_left_cat_bitsets))
    if np.any(nodes["bitset_idx"][categorical].astype(np.int64) >= bitsets):
        return "tree bitset index out of range"
    return None


def _binary_tree_problem(tree: Any) -> str | None:
    import numpy as np

    data, idx_array, node_data = tree.get_arrays()[:3]
    n = len(data)
    if np.any((idx_array < 0) | (idx_array >= n)):
        return "neighbour index out of range"
    starts, ends = node_data["idx_start"], node_data["idx_end"]
    if np.any((starts < 0) | (ends > len(idx_array)) | (starts > ends)):
        return "neighbour node range out of bounds"
    return None


def structure_problem(model: Any, limit: int = 100_000) -> str | None:
    """Walk the loaded estimator and bounds-check every tree it holds (None when all are sound)."""
    import numpy as np
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.neighbors._ball_tree import BallTree
    from sklearn.neighbors._kd_tree import KDTree
    from sklearn.tree._tree import Tree

    stack: list[tuple[Any, int | None]] = [(model, None)]
    seen: set[int] = set()
    while stack and len(seen) < limit:
        obj, n_features = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Tree):
            problem = _tree_problem(obj, n_features)
        elif isinstance(obj, TreePredictor):
            problem = _predictor_problem(obj, n_features)
        elif isinstance(obj, (KDTree, BallTree)):
            problem = _binary_tree_problem(obj)
        else:
            width = getattr(obj, "n_features_in_", None)
            width = int(width) if isinstance(width, (int, np.integer)) else n_features
            stack.extend((child, width) for child in _children(obj))
            problem = None
        if problem:
            return problem
    return None


# -- registry helpers ---------------------------------------------------------------------------


@dataclass
class VerifiedModel:
    """A version loaded through the safe path."""

    name: str
    version: str
    model: Any
    hashes: dict[str, str]


def download_version(client: MlflowClient, name: str, version: str, dst: Path) -> Path:
    """Download the files of ``models:/name/version`` into ``dst`` (no model code runs)."""
    import mlflow.artifacts

    uri = client.get_model_version_download_uri(name, version)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def load_verified_version(client: MlflowClient, name: str, version: str, *, require_gates: bool) -> VerifiedModel:
    """Download, verify and load one registered version's sklearn model through the safe path."""
    model_version = client.get_model_version(name, str(version))
    tags = dict(model_version.tags or {})
    if require_gates and (reason := gate_refusal(tags)):  # refuse before downloading anything
        raise ModelRefused(f"version {version} refused: {reason}")
    workdir = Path(tempfile.mkdtemp(prefix="ml_platform_verify_"))
    try:
        model_dir = download_version(client, name, str(version), workdir)
        hashes = verify_model_dir(str(version), model_dir, tags, require_gates=require_gates)
        model = load_skops_model(model_dir / SKOPS_RELPATH, str(version))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return VerifiedModel(name, str(version), model, hashes)
