"""``ModelContext``: one model's namespace in the code location (keys, group, tags, partitions, names)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ml_platform.catalog import ModelEntry
from ml_platform.spec import DatasetSpec

MODEL_TAG = "ml_platform/model"
PARTITIONS_START_ENV = "DRIFT_PARTITIONS_START_DATE"
DEFAULT_PARTITIONS_START = "2025-01-01"


def _days() -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(
        start_date=os.environ.get(PARTITIONS_START_ENV, "").strip() or DEFAULT_PARTITIONS_START,
        timezone="UTC",
        # Today's partition exists while the day is still running: a report on "today so far"
        # is what a user wants after sending traffic. The schedule reports on complete days.
        end_offset=1,
    )


@dataclass(frozen=True)
class ModelContext:
    """Everything a factory needs to build one model's definitions, namespaced by the model's name."""

    entry: ModelEntry
    landed_files: dg.DynamicPartitionsDefinition = field(init=False, repr=False, compare=False)
    model_versions: dg.DynamicPartitionsDefinition = field(init=False, repr=False, compare=False)
    days: dg.DailyPartitionsDefinition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Partitions are created once per model, so every asset, job and sensor of it shares them.
        object.__setattr__(self, "landed_files", dg.DynamicPartitionsDefinition(name=f"{self.name}_landed_files"))
        object.__setattr__(self, "model_versions", dg.DynamicPartitionsDefinition(name=f"{self.name}_model_versions"))
        object.__setattr__(self, "days", _days())

    @property
    def name(self) -> str:
        """The model's instance name (its folder under ``defs/models/``)."""
        return self.entry.name

    @property
    def spec(self) -> DatasetSpec:
        return self.entry.spec

    @property
    def registered_name(self) -> str:
        """The MLflow registered model name (``spec.model.name``)."""
        return self.entry.spec.model.name

    @property
    def is_default(self) -> bool:
        return self.entry.default

    @property
    def group(self) -> str:
        return self.name

    @property
    def owners(self) -> list[str]:
        return list(self.entry.owners)

    @property
    def tags(self) -> dict[str, str]:
        """Tags of every asset, job and run request of this model."""
        return {MODEL_TAG: self.name}

    def key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.name, asset])

    def job_name(self, base: str) -> str:
        return f"{self.name}_{base}"

    def sensor_name(self, base: str) -> str:
        return f"{self.name}_{base}"

    def schedule_name(self, base: str) -> str:
        return f"{self.name}_{base}"

    def asset_kwargs(self, asset: str, **extra: Any) -> dict[str, Any]:
        """Keyword arguments every asset of this model shares (key, group, owners, tags)."""
        return {
            "key": self.key(asset),
            "group_name": self.group,
            "owners": self.owners or None,
            "tags": self.tags,
            **extra,
        }
