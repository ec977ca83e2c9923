"""Loading the code location must not import heavy libraries (they load inside steps)."""

import json
import os
import subprocess
import sys

from ml_platform_tests.conftest import REPO_ROOT

HEAVY = ["great_expectations", "evidently", "mlflow", "sklearn", "onnxruntime", "skl2onnx", "dagster_mlflow", "scipy"]


def test_loading_definitions_imports_no_heavy_library() -> None:
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
    assert {"raw_batch", "training_dataset", "candidate_model", "reference_snapshot"} <= set(payload["assets"])
