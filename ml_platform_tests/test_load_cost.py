"""Loading the code location must not import heavy libraries (they load inside steps), with every model."""

import json
import os
import subprocess
import sys

from ml_platform.catalog import model_names
from ml_platform_tests.conftest import REPO_ROOT

HEAVY = ["great_expectations", "evidently", "mlflow", "sklearn", "onnxruntime", "skl2onnx", "dagster_mlflow", "scipy"]
LIFECYCLE = [
    "raw_batch",
    "landing_report",
    "evaluation_set",
    "training_dataset",
    "candidate_model",
    "reference_snapshot",
    "canary_deployment",
    "production_window",
    "drift_report",
]


def test_loading_definitions_imports_no_heavy_library_and_yields_every_model() -> None:
    code = (
        "import json, sys, ml_platform\n"
        "defs = ml_platform.defs\n"
        "names = {a.key.to_user_string() for a in defs.resolve_all_asset_specs()}\n"
        f"print(json.dumps({{'loaded': [m for m in {HEAVY!r} if m in sys.modules], 'assets': sorted(names)}}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["loaded"] == []
    models = model_names()
    assert len(models) >= 2
    assert set(payload["assets"]) == {f"{model}/{asset}" for model in models for asset in LIFECYCLE}
