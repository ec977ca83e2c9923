"""Dagster components of ml_platform: ``ModelPipeline``, one instance per model."""

from ml_platform.components.model_pipeline import ModelPipeline

__all__ = ["ModelPipeline"]
