"""Gate bookkeeping on the registry: record pass/fail on the model version.

Every rejection is recorded twice: as Dagster check metadata (by the caller)
and here as MLflow model-version tags. A rejected version loses the
``challenger`` alias; ``champion`` is never touched by a gate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_platform.ml.registry import CHALLENGER_ALIAS, VALIDATION_STATUS_TAG, alias_version, gate_tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ml_platform.spec import DatasetSpec


def record_gate(client: MlflowClient, name: str, version: str, gate: str, passed: bool, reason: str) -> None:
    """Tag the version with the gate's outcome; on failure mark it rejected and drop ``challenger``."""
    client.set_model_version_tag(name, version, gate_tag(gate), "passed" if passed else "failed")
    if passed:
        return
    client.set_model_version_tag(name, version, VALIDATION_STATUS_TAG, "failed")
    client.set_model_version_tag(name, version, "rejected_by", gate)
    client.set_model_version_tag(name, version, "rejection_reason", reason[:4000])
    challenger = alias_version(client, name, CHALLENGER_ALIAS)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS)


def threshold_failures(candidate: dict[str, Any], spec: DatasetSpec) -> list[str]:
    """Why the candidate's evaluation-set metrics miss the spec's thresholds (empty: they meet them).

    ``candidate`` is an :class:`ml_platform.ml.training.Evaluation` as a dict. Checked: accuracy,
    macro F1, the per-class recall floor (classes present in the evaluation set) and the minimum
    number of distinct classes predicted.
    """
    thresholds = spec.thresholds
    failures = []
    if candidate["accuracy"] < spec.min_accuracy:
        failures.append(f"accuracy {candidate['accuracy']:.4f} < {spec.min_accuracy:.4f}")
    if thresholds.min_macro_f1 is not None and candidate["macro_f1"] < thresholds.min_macro_f1:
        failures.append(f"macro F1 {candidate['macro_f1']:.4f} < {thresholds.min_macro_f1:.4f}")
    present = candidate.get("extra", {}).get("classes_present", list(candidate["per_class_recall"]))
    if thresholds.min_class_recall is not None:
        for label in present:
            recall = candidate["per_class_recall"].get(label, 0.0)
            if recall < thresholds.min_class_recall:
                failures.append(f"recall of class {label} {recall:.4f} < {thresholds.min_class_recall:.4f}")
    predicted = candidate.get("extra", {}).get("predicted_classes", [])
    if len(predicted) < thresholds.min_predicted_classes:
        failures.append(
            f"predicts {len(predicted)} distinct class(es) ({', '.join(map(str, predicted)) or 'none'}) "
            f"< {thresholds.min_predicted_classes}"
        )
    return failures


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def comparison_table(candidate: dict[str, Any], champion: dict[str, Any] | None, spec: DatasetSpec) -> str:
    """Candidate and champion on the evaluation set, overall and per class, with the thresholds (markdown)."""
    thresholds = spec.thresholds
    rows = [
        "| metric | candidate | champion | threshold |",
        "|---|---|---|---|",
        f"| accuracy | {_fmt(candidate['accuracy'])} | {_fmt(champion['accuracy'] if champion else None)} | "
        f">= {spec.min_accuracy:.4f} |",
        f"| macro F1 | {_fmt(candidate['macro_f1'])} | {_fmt(champion['macro_f1'] if champion else None)} | "
        + (f">= {thresholds.min_macro_f1:.4f} |" if thresholds.min_macro_f1 is not None else "not set |"),
    ]
    floor = f">= {thresholds.min_class_recall:.4f}" if thresholds.min_class_recall is not None else "not set"
    for label in candidate["class_labels"]:
        champ = champion["per_class_recall"].get(label) if champion else None
        rows.append(f"| recall {label} | {_fmt(candidate['per_class_recall'][label])} | {_fmt(champ)} | {floor} |")
    for label in candidate["class_labels"]:
        champ = champion["per_class_precision"].get(label) if champion else None
        rows.append(f"| precision {label} | {_fmt(candidate['per_class_precision'][label])} | {_fmt(champ)} | |")
    predicted = candidate.get("extra", {}).get("predicted_classes", [])
    champ_predicted = champion.get("extra", {}).get("predicted_classes", []) if champion else None
    rows.append(
        f"| classes predicted | {len(predicted)} | {'n/a' if champ_predicted is None else len(champ_predicted)} | "
        f">= {thresholds.min_predicted_classes} |"
    )
    rows.append(f"| evaluation rows | {candidate['test_rows']} | {champion['test_rows'] if champion else 'n/a'} | |")
    return "\n".join(rows)


@dataclass
class SmokeTestResult:
    """Outcome of loading a version in a fresh interpreter and predicting its input example."""

    passed: bool
    detail: str
    predictions: list[Any]
    load_seconds: float | None
    onnx_agrees: bool | None


_SMOKE_SCRIPT = "from ml_platform.ml.gates import smoke_main; smoke_main()"


def smoke_main(argv: list[str] | None = None) -> None:
    """Body of the smoke-test process: load through the safe path, predict the example, print JSON."""
    import os
    import time

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import numpy as np
    import pandas as pd
    import yaml
    from mlflow import MlflowClient

    from ml_platform.ml.safe_load import (
        ONNX_RELPATH,
        SKOPS_RELPATH,
        download_version,
        load_skops_model,
        verify_model_dir,
    )
    from ml_platform.ml.training import feature_frame
    from ml_platform.spec import parse_spec

    name, version, tracking_uri, workdir = argv or sys.argv[1:5]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    tags = dict(client.get_model_version(name, version).tags or {})
    started = time.perf_counter()
    local = download_version(client, name, version, Path(workdir))
    verify_model_dir(version, local, tags, require_gates=False)  # a gate itself: the others may still be running
    model = load_skops_model(local / SKOPS_RELPATH, version)
    load_seconds = time.perf_counter() - started
    spec_path = local / "extra_files" / "dataset_spec.yaml"
    spec = parse_spec(yaml.safe_load(spec_path.read_text()), source_path=spec_path)
    example = json.loads((local / "extra_files" / "input_example.json").read_text())
    frame = feature_frame(pd.DataFrame(example["records"]), spec)
    predictions = [p.item() if hasattr(p, "item") else p for p in model.predict(frame)]
    onnx_agrees = None
    if (local / ONNX_RELPATH).exists():
        import onnxruntime as ort

        session = ort.InferenceSession(str(local / ONNX_RELPATH), providers=["CPUExecutionProvider"])
        labels = session.run(None, {"input": frame.to_numpy(dtype=np.float32)})[0]
        onnx_agrees = [str(x) for x in labels] == [str(x) for x in predictions]
    print(json.dumps({"predictions": predictions, "load_seconds": load_seconds, "onnx_agrees": onnx_agrees}))


def serving_smoke_test(model_uri: str, tracking_uri: str, timeout: float = 180.0) -> SmokeTestResult:
    """Load ``model_uri`` (``models:/<name>/<version>``) in a clean process and predict its input example.

    The process loads the version exactly as serving does: files downloaded, hashes checked against
    the registration tags, the skops file read with the platform's fixed type allowlist (never pickle).
    """
    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    try:
        with tempfile.TemporaryDirectory(prefix="ml_platform_smoke_") as workdir:
            completed = subprocess.run(
                [sys.executable, "-c", _SMOKE_SCRIPT, name, version, tracking_uri, workdir],
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
