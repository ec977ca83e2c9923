"""Prepare a platform home: folders, a Dagster instance config, and the first batch.

``python -m ml_platform.bootstrap`` is idempotent: on a fresh home it lands the
active spec's bundled data (iris by default) in incoming/; on an existing home
it changes nothing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ml_platform import settings
from ml_platform.resources.landing_zone import LandingZone
from ml_platform.spec import load_spec

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


def bootstrap(dataset: str | None = None) -> Path | None:
    """Create the home folders and land the bundled data if nothing has landed yet."""
    settings.ensure_local_dirs()
    ensure_dagster_home()
    spec = load_spec(dataset)
    return LandingZone(dataset=spec.name).bootstrap(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", help="dataset spec name or path (default: ML_PLATFORM_DATASET or iris)")
    args = parser.parse_args(argv)
    landed = bootstrap(args.dataset)
    home = settings.platform_home()
    print(f"platform home: {home}")
    print(f"landed bundled data: {landed}" if landed else "data already present: nothing landed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
