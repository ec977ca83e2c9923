"""Prepare a platform home: folders, a Dagster instance config, and the first batch.

``python -m ml_platform.bootstrap`` is idempotent: on a fresh home it lands each
model's bundled data in its ``data/<model>/incoming/`` (every model of the catalog, or
``--model <name>``); a model that has data already is left alone.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ml_platform import settings
from ml_platform.catalog import get_model, list_models
from ml_platform.validation.landing_zone import LandingZone

DAGSTER_YAML = """\
# Written by ml_platform.bootstrap: local sqlite storage under the platform home.
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator.queued_run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
"""


def ensure_dagster_home() -> Path:
    """Create ``DAGSTER_HOME`` (default: inside the platform home) with a dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.platform_paths().dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return home


def bootstrap(model: str | None = None) -> list[Path]:
    """Create the home folders and land each model's bundled data where nothing has landed yet."""
    settings.ensure_local_dirs()
    ensure_dagster_home()
    entries = [get_model(model)] if model else list_models()
    zone = LandingZone()
    landed = [zone.for_model(e.name).bootstrap(e.spec) for e in entries]
    return [path for path in landed if path is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="one model of the catalog (default: every model)")
    args = parser.parse_args(argv)
    landed = bootstrap(args.model)
    home = settings.platform_home()
    print(f"platform home: {home}")
    for path in landed:
        print(f"landed bundled data: {path}")
    if not landed:
        print("data already present: nothing landed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
