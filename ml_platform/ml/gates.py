"""Gate bookkeeping on the registry: record pass/fail on the model version.

Every rejection is recorded twice: as Dagster check metadata (by the caller)
and here as MLflow model-version tags. A rejected version loses the
``challenger`` alias; ``champion`` is never touched by a gate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml_platform.ml.registry import CHALLENGER_ALIAS, VALIDATION_STATUS_TAG, alias_version

if TYPE_CHECKING:
    from mlflow import MlflowClient


def record_gate(client: MlflowClient, name: str, version: str, gate: str, passed: bool, reason: str) -> None:
    """Tag the version with the gate's outcome; on failure mark it rejected and drop ``challenger``."""
    client.set_model_version_tag(name, version, f"gate.{gate}", "passed" if passed else "failed")
    if passed:
        return
    client.set_model_version_tag(name, version, VALIDATION_STATUS_TAG, "failed")
    client.set_model_version_tag(name, version, "rejected_by", gate)
    client.set_model_version_tag(name, version, "rejection_reason", reason[:4000])
    challenger = alias_version(client, name, CHALLENGER_ALIAS)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS)


@dataclass
class SmokeTestResult:
    """Outcome of loading a version in a fresh interpreter and predicting its input example."""

    passed: bool
    detail: str
    predictions: list[Any]
    load_seconds: float | None
    onnx_agrees: bool | None


_SMOKE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import pandas as pd
    uri, tracking_uri = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    started = time.perf_counter()
    local = mlflow.artifacts.download_artifacts(uri)
    model = mlflow.pyfunc.load_model(local)
    load_seconds = time.perf_counter() - started
    example = json.load(open(os.path.join(local, "extra_files", "input_example.json")))
    frame = pd.DataFrame(example["records"])
    predictions = [p.item() if hasattr(p, "item") else p for p in model.predict(frame)]
    onnx_agrees = None
    onnx_path = os.path.join(local, "extra_files", "model.onnx")
    if os.path.exists(onnx_path):
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        labels = session.run(None, {"input": frame.to_numpy(dtype=np.float32)})[0]
        onnx_agrees = [str(x) for x in labels] == [str(x) for x in predictions]
    print(json.dumps({"predictions": predictions, "load_seconds": load_seconds, "onnx_agrees": onnx_agrees}))
    """
)


def serving_smoke_test(model_uri: str, tracking_uri: str, timeout: float = 180.0) -> SmokeTestResult:
    """Load ``model_uri`` from the registry in a clean process and predict its input example."""
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _SMOKE_SCRIPT, model_uri, tracking_uri],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SmokeTestResult(False, f"loading {model_uri} took longer than {timeout:.0f}s", [], None, None)
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        return SmokeTestResult(False, f"loading or predicting failed: {tail}", [], None, None)
    try:
        payload = json.loads(completed.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return SmokeTestResult(False, f"unexpected smoke-test output: {completed.stdout[-500:]}", [], None, None)
    predictions = payload["predictions"]
    if not predictions:
        return SmokeTestResult(False, "the model returned no predictions for its input example", [], None, None)
    if payload["onnx_agrees"] is False:
        return SmokeTestResult(
            False, "the ONNX graph disagrees with the sklearn model", predictions, payload["load_seconds"], False
        )
    return SmokeTestResult(
        True,
        f"loaded in a fresh process and predicted {len(predictions)} example rows",
        predictions,
        payload["load_seconds"],
        payload["onnx_agrees"],
    )
