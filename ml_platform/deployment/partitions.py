"""``model_versions``: one dynamic partition per registered model version (key = the version string)."""

import dagster as dg

model_versions = dg.DynamicPartitionsDefinition(name="model_versions")
