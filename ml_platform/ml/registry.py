"""Log, register and look up model versions in the MLflow registry.

A registered version is self-contained: the skops-serialised sklearn model,
its signature, explicit pip requirements, and as extra files the dataset spec
(``extra_files/dataset_spec.yaml``), an input example
(``extra_files/input_example.json``) and, where the estimator converts, a
verified ONNX graph (``extra_files/model.onnx``). Serving needs nothing else.

Version tags written here (all prefixed ``ml_platform.`` is avoided to keep
them readable in the MLflow UI): ``dataset``, ``data_version``,
``code_version``, ``git_commit``, ``dagster_run_id``, ``onnx``,
``sha256.model_skops`` / ``sha256.model_onnx`` (hashes of the stored model
files, checked by every loader, see :mod:`ml_platform.ml.safe_load`),
``gate.<gate>`` (``passed``/``failed`` per blocking model gate) and
``validation_status`` (``pending`` until the gates pass, then ``passed`` or
``failed``; ``passed`` is written only by :func:`mark_validated`, after every
gate in :data:`BLOCKING_MODEL_GATES` has recorded ``passed``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_platform.ml.onnx_export import OnnxExport, convert_to_onnx
from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"
PREVIOUS_CHAMPION_ALIAS = "previous_champion"
MODEL_ARTIFACT_NAME = "model"
SPEC_FILENAME = "dataset_spec.yaml"
INPUT_EXAMPLE_FILENAME = "input_example.json"
VALIDATION_STATUS_TAG = "validation_status"
EVALUATION_SET_VERSION_TAG = "evaluation_set_version"
TRAINING_BATCHES_ARTIFACT = "training_batches.json"
TRAINING_BATCHES_COUNT_TAG = "training_batches_count"
TRAINING_WINDOW_TAG = "training_window"
JUDGED_AGAINST_TAG = "judged_against_champion"
VALIDATED_AT_TAG = "validated_at"
# The blocking model gates (asset checks on candidate_model); a version is validated only when all passed.
BLOCKING_MODEL_GATES = ("metric_thresholds", "no_regression", "serving_smoke_test")
INPUT_EXAMPLE_ROWS = 5

_RUNTIME_PACKAGES = ("scikit-learn", "skops", "numpy", "pandas", "scipy")


@dataclass
class RegisteredVersion:
    """What downstream assets and checks need to know about a registered version."""

    name: str
    version: str
    run_id: str
    model_uri: str
    data_version: str
    onnx: bool
    metrics: dict[str, float]
    tracking_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pip_requirements() -> list[str]:
    """Exact pins of the packages a loaded model needs (no slow inference)."""
    pins = []
    for package in _RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def git_commit() -> str:
    """The current git commit, or ``unknown`` outside a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def package_version() -> str:
    """The installed ml_platform package version."""
    try:
        return metadata.version("ml_platform")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def training_config_hash(spec: DatasetSpec) -> str:
    """Hash of what in the spec shapes the trained model and its gates.

    Features, target, estimator and params, training window and cores, evaluation-set rules and the
    effective thresholds (``MODEL_MIN_ACCURACY`` included). Drift, rollout, reference and free text
    are left out: changing them does not change what training produces or how it is judged.
    """
    from pydantic import TypeAdapter

    raw = TypeAdapter(DatasetSpec).dump_python(spec, mode="json")
    kept = {k: raw[k] for k in ("name", "features", "target", "model", "thresholds", "training", "evaluation")}
    kept["thresholds"] = {**kept["thresholds"], "min_accuracy": spec.min_accuracy}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def code_version(spec: DatasetSpec | None = None) -> str:
    """What produced a model, besides its data: ``<package>[+g<commit>][.s<training config>]``.

    The package version alone does not change between commits, so the git commit (when known) and,
    with ``spec``, :func:`training_config_hash` are part of it: a retrain after a code or spec change
    is a different (data_version, code_version) pair and is not mistaken for a rejected one.
    """
    version = package_version()
    commit = git_commit()
    parts = [f"g{commit[:12]}"] if commit != "unknown" else []
    if spec is not None:
        parts.append(f"s{training_config_hash(spec)[:12]}")
    return version + ("+" + ".".join(parts) if parts else "")


def model_signature(spec: DatasetSpec) -> Any:
    """MLflow signature from the spec: one named column per feature, one label out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    mlflow_types = {"float": "double", "int": "double", "category": "string"}
    inputs = Schema([ColSpec(mlflow_types[f.type], f.name) for f in spec.features])
    label_type = "long" if all(isinstance(c, int) for c in spec.target.classes) else "string"
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(label_type)]))


class UnsupportedModelError(ValueError):
    """A fitted model the platform cannot register safely (its skops file needs untrusted types)."""


def gate_tag(gate: str) -> str:
    """The model-version tag holding one gate's outcome."""
    return f"gate.{gate}"


def skops_trusted_types(model: Any) -> list[str]:
    """The non-default skops types this model needs; all must be in the platform's fixed allowlist."""
    import skops.io

    from ml_platform.ml.safe_load import TRUSTED_SKOPS_TYPES

    needed = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    refused = [t for t in needed if t not in TRUSTED_SKOPS_TYPES]
    if refused:
        raise UnsupportedModelError(
            f"{type(model).__name__} serialises types the platform does not trust: {refused} "
            "(ml_platform.ml.safe_load.TRUSTED_SKOPS_TYPES)"
        )
    return needed


def stored_artifact_hashes(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """sha256 tags of the model files as stored for ``version`` (downloaded back, then hashed)."""
    from ml_platform.ml.safe_load import SKOPS_RELPATH, artifact_hashes, download_version

    with tempfile.TemporaryDirectory(prefix="ml_platform_hash_") as tmp:
        hashes = artifact_hashes(download_version(client, name, version, Path(tmp)))
    if not hashes or "sha256.model_skops" not in hashes:
        raise UnsupportedModelError(f"models:/{name}/{version} has no {SKOPS_RELPATH} to record")
    return hashes


def mark_validated(client: MlflowClient, name: str, version: str) -> None:
    """Write ``validation_status=passed`` (and ``validated_at``) once every blocking gate has passed.

    This is the tag serving and the deployer require; it is never written while a gate is missing or failed.
    """
    tags = client.get_model_version(name, str(version)).tags or {}
    missing = [gate for gate in BLOCKING_MODEL_GATES if tags.get(gate_tag(gate)) != "passed"]
    if missing:
        raise ValueError(f"models:/{name}/{version}: gates {missing} have not passed; not marking it validated")
    client.set_model_version_tag(name, str(version), VALIDATED_AT_TAG, f"{time.time():.0f}")
    client.set_model_version_tag(name, str(version), VALIDATION_STATUS_TAG, "passed")


def log_and_register_model(
    model: Any,
    spec: DatasetSpec,
    train_frame: pd.DataFrame,
    *,
    run_id: str,
    data_version: str,
    metrics: dict[str, float],
    extra_tags: dict[str, str],
) -> tuple[RegisteredVersion, OnnxExport]:
    """Log ``model`` to the active MLflow run, register it and alias it ``challenger``."""
    import mlflow
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="ml_platform_model_") as tmp:
        workdir = Path(tmp)
        from ml_platform.ml.training import all_cores

        with all_cores(model, spec):  # the check predicts every training row with sklearn too
            onnx_export = convert_to_onnx(model, spec, train_frame, workdir)
        spec_file = workdir / SPEC_FILENAME
        if spec.source_path is not None:
            spec_file.write_text(spec.source_path.read_text())
        example_file = workdir / INPUT_EXAMPLE_FILENAME
        example = train_frame[spec.feature_names].head(INPUT_EXAMPLE_ROWS)
        example_file.write_text(json.dumps({"records": json.loads(example.to_json(orient="records"))}))
        extra_files = [str(spec_file), str(example_file)]
        if onnx_export.path is not None:
            extra_files.append(str(onnx_export.path))

        model_info = mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT_NAME,
            serialization_format="skops",
            skops_trusted_types=skops_trusted_types(model),
            signature=model_signature(spec),
            pip_requirements=pip_requirements(),
            extra_files=extra_files,
            registered_model_name=spec.model.name,
            await_registration_for=60,
        )
    version = str(model_info.registered_model_version)
    client = MlflowClient()
    tags = {
        "dataset": spec.name,
        "data_version": data_version,
        "code_version": code_version(spec),
        "git_commit": git_commit(),
        "onnx": "verified" if onnx_export.verified else f"unavailable: {onnx_export.reason}"[:250],
        VALIDATION_STATUS_TAG: "pending",
        "accuracy": f"{metrics.get('accuracy', float('nan')):.4f}",
        **extra_tags,
        **stored_artifact_hashes(client, spec.model.name, version),
    }
    for key, value in tags.items():
        client.set_model_version_tag(spec.model.name, version, key, value)
    client.set_registered_model_alias(spec.model.name, CHALLENGER_ALIAS, version)
    registered = RegisteredVersion(
        name=spec.model.name,
        version=version,
        run_id=run_id,
        model_uri=f"models:/{spec.model.name}/{version}",
        data_version=data_version,
        onnx=onnx_export.verified,
        metrics=metrics,
        tracking_uri=mlflow.get_tracking_uri(),
    )
    return registered, onnx_export


def alias_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    """The model version behind ``alias``, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metric(client: MlflowClient, model_version: Any, metric: str) -> float | None:
    """A metric of the run that produced ``model_version`` (None when absent)."""
    if not model_version.run_id:
        return None
    run = client.get_run(model_version.run_id)
    value = run.data.metrics.get(metric)
    return None if value is None else float(value)


def training_batches(client: MlflowClient, model_name: str, version: str) -> list[str]:
    """The keys (``<name>@<sha256>``) of the landed batches whose rows ``version`` trained on.

    Read from the ``training_batches.json`` artifact of the version's MLflow run (written by
    ``candidate_model``); empty for versions trained before it existed.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    model_version = client.get_model_version(model_name, str(version))
    if not model_version.run_id:
        return []
    try:
        payload = mlflow.artifacts.load_dict(
            client.get_run(model_version.run_id).info.artifact_uri.rstrip("/") + "/" + TRAINING_BATCHES_ARTIFACT
        )
    except (MlflowException, OSError):
        return []
    return [str(item["key"]) for item in payload] if isinstance(payload, list) else []


def rejection_of(tags: dict[str, str]) -> str | None:
    """Why a version counts as rejected (a model gate, or a canary), or None."""
    if tags.get("rejected_by"):
        return f"gate {tags['rejected_by']}: {tags.get('rejection_reason', '')}".strip()
    if tags.get("deployment_status") == "rejected":
        reason = tags.get("rejected_reason") or tags.get("deployment.reason") or ""
        return f"canary rejected it{': ' + reason if reason else ''}"
    if tags.get(VALIDATION_STATUS_TAG) == "failed":
        return "its model gates failed"
    return None


def rejected_twin(
    client: MlflowClient, model_name: str, data_version: str, code: str, champion: str | None = None
) -> tuple[Any, str] | None:
    """A rejected version of ``model_name`` trained on the same data version by the same code version.

    Returns ``(model version, why it was rejected)``, the newest such version, or None. Rejections that
    the same model might not meet again do not count: a failed serving smoke test (it can be the
    environment), and a failed regression gate when the champion (``champion``, its version or None)
    is no longer the one the version was judged against (tag ``judged_against_champion``).
    """
    from mlflow.exceptions import MlflowException

    query = f"name='{model_name}' and tags.data_version='{data_version}'"
    versions: list[Any]
    try:
        versions = list(client.search_model_versions(query))
    except MlflowException:
        versions = [
            v
            for v in client.search_model_versions(f"name='{model_name}'")
            if (v.tags or {}).get("data_version") == data_version
        ]
    for found in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = dict(found.tags or {})
        if tags.get("data_version") != data_version or tags.get("code_version") != code:
            continue
        gate = tags.get("rejected_by")
        if gate == "serving_smoke_test":
            continue
        if gate == "no_regression" and tags.get(JUDGED_AGAINST_TAG) != (champion or "none"):
            continue
        why = rejection_of(tags)
        if why is not None:
            return found, why
    return None
