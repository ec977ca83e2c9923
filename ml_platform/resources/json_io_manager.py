"""An IO manager that stores small asset values as JSON, never pickle.

Assets in this code location hand each other descriptors (paths, hashes,
model-version coordinates), not data; the data itself lives in the platform
home as CSV/Parquet and in MLflow. JSON keeps those descriptors readable and
avoids unpickling anything.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ml_platform import settings

UNPARTITIONED = "__unpartitioned__"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=-]", "_", part)


class JsonIOManager(dg.ConfigurableIOManager):
    """Stores each output as ``<base_dir>/<asset path>/<partition>.json``."""

    base_dir: str | None = Field(default=None, description="Default: <platform home>/dagster/io")

    def _root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else settings.platform_paths().dagster_home / "io"

    def _asset_dir(self, context: dg.OutputContext | dg.InputContext) -> Path:
        parts = [_safe(p) for p in context.asset_key.path] if context.has_asset_key else [_safe(context.name or "out")]
        return self._root().joinpath(*parts)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        folder = self._asset_dir(context)
        partitioned = context.has_asset_partitions
        self._write(folder / f"{_safe(context.asset_partition_key if partitioned else UNPARTITIONED)}.json", obj)
        if context.has_asset_key:
            # Steps of the same run (e.g. a check after a sweep) find the value by run id.
            self._write(folder / "runs" / f"{_safe(context.run_id)}.json", obj)

    @staticmethod
    def _write(path: Path, obj: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        tmp.replace(path)

    def load_input(self, context: dg.InputContext) -> Any:
        folder = self._asset_dir(context)
        candidates = []
        upstream = context.upstream_output
        if upstream is not None:
            with contextlib.suppress(dg.DagsterInvariantViolationError):
                candidates.append(folder / "runs" / f"{_safe(upstream.run_id)}.json")
        if context.has_asset_partitions and len(context.asset_partition_keys) == 1:
            candidates.append(folder / f"{_safe(context.asset_partition_key)}.json")
        candidates.append(folder / f"{UNPARTITIONED}.json")
        for path in candidates:
            if path.exists():
                return json.loads(path.read_text())
        raise FileNotFoundError(
            f"no stored value for {context.asset_key.to_user_string()} under {folder}; materialize it first"
        )
