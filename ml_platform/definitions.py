"""``defs``: the Dagster code location of ml_platform, loaded from the ``ml_platform/defs`` folder.

Every ``defs/models/<name>/defs.yaml`` is a ``ModelPipeline`` component instance (one model each);
``defs/resources.py`` adds the shared resources. Loading imports only Dagster and the platform's
light modules; great_expectations, mlflow, sklearn and friends load inside the steps that use them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import dagster as dg

PACKAGE_DIR = Path(__file__).resolve().parent


def build_defs() -> dg.Definitions:
    """Load every model and the shared resources; one process per run (``in_process_executor``)."""
    defs_root = importlib.import_module("ml_platform.defs")
    loaded = dg.load_defs(defs_root=defs_root, project_root=PACKAGE_DIR.parent)
    # One process per run: steps are cheap to chain and the code location loads once.
    return dg.Definitions.merge(loaded, dg.Definitions(executor=dg.in_process_executor))


defs = build_defs()
