"""The training job's gates never execute a hostile champion or candidate.

``no_regression_against_champion`` scores the ``champion`` version; the serving smoke test loads the
candidate in a fresh process. Both go through the safe loader: a champion alias on a pickle payload
(with forged gate and hash tags) is refused with the reason in the check result, and its payload
never runs; a candidate whose stored file no longer matches its recorded hash fails the smoke test.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from ml_platform.ml.mlflow_store import MlflowStore
from ml_platform.ml.registry import CHAMPION_ALIAS
from ml_platform_tests.pipeline.helpers import check_outcomes, registry_client, run_training
from ml_platform_tests.registry_helpers import register_pickle_payload, register_tampered_copy

pytestmark = pytest.mark.slow

MODEL = "iris-random-forest"


def test_hostile_champion_is_refused_by_the_regression_gate_and_never_runs(platform_home: Path, tmp_path: Path):
    from ml_platform.ml.gates import serving_smoke_test
    from ml_platform.ml.safe_load import ModelRefused, load_verified_version

    marker = tmp_path / "pwned-by-gate"
    with dg.instance_for_test() as instance:
        assert run_training(instance).success
        client = registry_client()
        hostile = register_pickle_payload(client, MODEL, "1", tmp_path, marker)
        client.set_registered_model_alias(MODEL, CHAMPION_ALIAS, hostile)

        result = run_training(instance)

    assert not marker.exists(), "the champion's pickle payload ran in the training job"
    evaluation = next(
        e for e in result.get_asset_check_evaluations() if e.check_name == "no_regression_against_champion"
    )
    assert f"champion version {hostile} refused: no model.skops" in (evaluation.description or "")
    assert check_outcomes(result)["serving_smoke_test"] is True

    tracking_uri = MlflowStore().resolved_uri()
    # The smoke test of a version whose stored skops file changed after registration fails, naming why.
    tampered = register_tampered_copy(client, MODEL, "1", tmp_path, "model.skops")
    smoke = serving_smoke_test(f"models:/{MODEL}/{tampered}", tracking_uri)
    assert not smoke.passed and f"version {tampered} refused: artifact hash mismatch (model.skops)" in smoke.detail
    # ... and the hostile version is refused by the smoke test's loader too, without running.
    smoke = serving_smoke_test(f"models:/{MODEL}/{hostile}", tracking_uri)
    assert not smoke.passed and "refused" in smoke.detail
    with pytest.raises(ModelRefused, match="artifact hash mismatch"):
        load_verified_version(client, MODEL, tampered, require_gates=True)
    assert not marker.exists()
