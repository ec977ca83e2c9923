"""Tag registered test versions exactly as training_job does once its gates pass.

Serving, the deployer and the champion comparison load only versions whose blocking
model gates all recorded ``passed`` and whose ``validation_status`` is ``passed``
(written by ``mark_validated``, which checks the gate tags). Fixtures that register
models outside Dagster call :func:`pass_gates` instead of setting tags by hand.
"""

from __future__ import annotations

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


def hash_tags(model_version: Any) -> dict[str, str]:
    """The artifact sha256 tags of a version (to register a copy of its files)."""
    return {k: v for k, v in (model_version.tags or {}).items() if k.startswith("sha256.")}
