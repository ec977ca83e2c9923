"""The Dagster layer of ml_platform, loaded by ``ml_platform.definitions`` with ``dg.load_defs``.

- ``models/<name>/defs.yaml``: one ``ModelPipeline`` component instance per model;
- ``resources.py``: the model-independent resources (``@dg.definitions``);
- the other modules are factories (``build_<domain>_defs(model)``) the component calls; they
  define nothing at module level, so the folder scan finds nothing in them.
"""
