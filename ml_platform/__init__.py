"""ml_platform: an ML CI/CD platform on Dagster.

``ml_platform.defs`` is the code location's ``Definitions``
(``dagster dev`` / ``dagster job execute -m ml_platform``).
"""

from ml_platform.definitions import defs

__all__ = ["defs"]
