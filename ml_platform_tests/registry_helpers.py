"""Tag registered test versions exactly as training_job does once its gates pass.

Serving, the deployer and the champion comparison load only versions whose blocking
model gates all recorded ``passed`` and whose ``validation_status`` is ``passed``
(written by ``mark_validated``, which checks the gate tags). Fixtures that register
models outside Dagster call :func:`pass_gates` instead of setting tags by hand.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any


def record_passed_gates(client: Any, name: str, version: str) -> None:
    """Record ``passed`` for every blocking model gate, as the asset checks do."""
    from ml_platform.ml.gates import record_gate
    from ml_platform.ml.registry import BLOCKING_MODEL_GATES

    for gate in BLOCKING_MODEL_GATES:
        record_gate(client, name, str(version), gate, True, "passed in a test fixture")


def pass_gates(client: Any, name: str, version: str) -> None:
    """Record every gate as passed, then mark the version validated (what reference_snapshot does)."""
    from ml_platform.ml.registry import mark_validated

    record_passed_gates(client, name, version)
    mark_validated(client, name, str(version))


def register_fitted(
    fitted: Any,
    spec: Any,
    split: Any,
    *,
    data_version: str,
    experiment_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> tuple[Any, Any]:
    """Log and register ``fitted`` in its own MLflow run, as training_job does, then pass its gates.

    Returns ``(registered version, ONNX export outcome)``.
    """
    import mlflow

    from ml_platform.ml.registry import log_and_register_model
    from ml_platform.ml.training import evaluate_model

    with mlflow.start_run(experiment_id=experiment_id) as run:
        registered, export = log_and_register_model(
            fitted,
            spec,
            split.x_train,
            run_id=run.info.run_id,
            data_version=data_version,
            metrics=evaluate_model(fitted, split, spec).flat_metrics(),
            extra_tags=extra_tags or {},
        )
    pass_gates(mlflow.MlflowClient(), spec.model.name, str(registered.version))
    return registered, export


def hash_tags(model_version: Any) -> dict[str, str]:
    """The artifact sha256 tags of a version (to register a copy of its files)."""
    return {k: v for k, v in (model_version.tags or {}).items() if k.startswith("sha256.")}


# -- hostile versions: what someone with write access to the registry or artifact store can register --


class _WritesMarker:
    """Pickles to ``exec(code)``: unpickling it runs code (what a malicious model payload does)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


def marker_code(marker: Path) -> str:
    """Python that writes ``marker`` (or ``$ML_PWN_MARKER``, for a control run) when executed."""
    return f"import os; open(os.environ.get('ML_PWN_MARKER') or {str(marker)!r}, 'w').write('pwned')"


def copy_model_files(client: Any, name: str, version: str, target: Path) -> Path:
    """A private copy of a version's stored files, to tamper with."""
    import mlflow.artifacts

    source = Path(mlflow.artifacts.download_artifacts(client.get_model_version_download_uri(name, version)))
    shutil.copytree(source, target)
    return target


def register_files(client: Any, name: str, files: Path, run_id: str | None, tags: dict[str, str]) -> str:
    """Register ``files`` as a new version of ``name`` with ``tags`` (forged or not)."""
    return str(client.create_model_version(name, files.as_uri(), run_id=run_id, tags=tags).version)


def register_pickle_payload(client: Any, name: str, source_version: str, root: Path, marker: Path) -> str:
    """A version whose model is a pickle that writes ``marker`` when loaded, with every tag forged.

    Its ``MLmodel`` says ``serialization_format: pickle`` (as MLflow writes for pickle models); there is no
    skops file and no ONNX graph, and it carries the source version's tags (gates passed, hashes).
    """
    import pickle

    import yaml

    source = client.get_model_version(name, source_version)
    files = copy_model_files(client, name, source_version, root / f"pickle-payload-{uuid.uuid4().hex[:8]}")
    (files / "model.skops").unlink()
    (files / "extra_files" / "model.onnx").unlink(missing_ok=True)
    (files / "model.pkl").write_bytes(pickle.dumps(_WritesMarker(marker_code(marker))))
    mlmodel = yaml.safe_load((files / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update(pickled_model="model.pkl", serialization_format="pickle")
    mlmodel["flavors"]["sklearn"].pop("skops_trusted_types", None)
    mlmodel["flavors"]["python_function"]["model_path"] = "model.pkl"
    (files / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    tags = dict(source.tags or {})
    tags["onnx"] = "unavailable: attacker"
    return register_files(client, name, files, source.run_id, tags)


def register_tampered_copy(client: Any, name: str, source_version: str, root: Path, relpath: str) -> str:
    """A copy of a gated version with one model file altered after its hash was recorded."""
    source = client.get_model_version(name, source_version)
    files = copy_model_files(client, name, source_version, root / f"tampered-{uuid.uuid4().hex[:8]}")
    path = files / relpath
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return register_files(client, name, files, source.run_id, dict(source.tags or {}))


def register_ungated_copy(client: Any, name: str, source_version: str, root: Path) -> str:
    """An intact copy of a version with its hashes but without any gate tags (never validated)."""
    source = client.get_model_version(name, source_version)
    files = copy_model_files(client, name, source_version, root / f"ungated-{uuid.uuid4().hex[:8]}")
    tags = {**hash_tags(source), "onnx": (source.tags or {}).get("onnx", ""), "validation_status": "pending"}
    return register_files(client, name, files, source.run_id, tags)
