"""The Dagster UI (``dagster dev``) driven in headless Chromium."""
