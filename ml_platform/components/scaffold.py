"""``dg scaffold defs ml_platform.components.ModelPipeline models/<name>``: a new model instance to fill in.

The scaffolder writes a commented ``defs.yaml`` and a commented ``spec.yaml`` template (from
:mod:`ml_platform.onboarding`, which ``python -m ml_platform.catalog scaffold <name>`` uses too) into the
target folder. The folder's name is the model's name. See ``docs/models.md``.
"""

from __future__ import annotations

import dagster as dg
from dagster.components.scaffold.scaffold import NoParams

from ml_platform.catalog import CatalogError
from ml_platform.onboarding import ScaffoldError, render_templates, write_templates


class ModelPipelineScaffolder(dg.Scaffolder[NoParams]):
    """Writes ``defs.yaml`` (the ModelPipeline instance) and a ``spec.yaml`` template into the target folder."""

    def scaffold(self, request: dg.ScaffoldRequest[NoParams]) -> None:
        """Refuses a folder name that is not a model name, and existing files."""
        name = request.target_path.name
        try:
            files = render_templates(name)
        except CatalogError as exc:
            raise ScaffoldError(f"{request.target_path}: {exc}") from exc
        write_templates(request.target_path, files)
