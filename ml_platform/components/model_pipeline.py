"""``ModelPipeline``: the Dagster component behind every model folder ``ml_platform/defs/models/<name>/``.

An instance is a ``defs.yaml``::

    type: ml_platform.components.ModelPipeline
    attributes:
      spec: spec.yaml          # the dataset spec, relative to this file
      default: false           # true for exactly one model: unprefixed jobs and routes serve it
      owners: ["team:ml-platform"]
      description: ""          # optional; default: the spec's description

The folder name is the model's name (``^[a-z][a-z0-9_]{0,39}$``): the namespace of its asset keys
(``<name>/candidate_model``), partitions, jobs (``<name>_training_job``), sensors, landing folders, logs,
metrics and routes. Each instance yields the model's whole lifecycle
(:func:`ml_platform.defs.pipeline.build_model_defs`). A new folder is picked up by the loader with no
code change.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from ml_platform.catalog import CatalogError, parse_entry
from ml_platform.components.scaffold import ModelPipelineScaffolder


@dg.scaffold_with(ModelPipelineScaffolder)
class ModelPipeline(dg.Component, dg.Model, dg.Resolvable):
    """One model's lifecycle: batch gate, training and gates, reference snapshot, canary deployment, drift."""

    spec: str = Field(
        default="spec.yaml",
        description="Path of the model's dataset spec (YAML, see docs/spec.schema.json), relative to defs.yaml.",
    )
    default: bool = Field(
        default=False,
        description=(
            "The default model: gets the unprefixed `training_job`, `canary_deployment_job` and `drift_job` and "
            "the unprefixed router paths. Exactly one model sets it."
        ),
    )
    owners: list[str] = Field(
        default_factory=list,
        description="Dagster asset owners of every asset of the model: emails or `team:<name>`.",
    )
    description: str = Field(default="", description="What the model is for; default: the spec's description.")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The model's definitions, namespaced by the instance folder's name."""
        from ml_platform.defs.model_context import ModelContext
        from ml_platform.defs.pipeline import build_model_defs

        defs_yaml = context.path / "defs.yaml"
        try:
            entry = parse_entry(
                defs_yaml,
                {"spec": self.spec, "default": self.default, "owners": self.owners, "description": self.description},
            )
        except CatalogError as exc:
            raise CatalogError(f"invalid ModelPipeline instance: {exc}") from exc
        return build_model_defs(ModelContext(entry))
