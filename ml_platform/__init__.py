"""ml_platform: an ML CI/CD platform on Dagster.

``ml_platform.defs`` is the code location's ``Definitions``
(``dagster dev`` / ``dagster job execute -m ml_platform``). It is built on
first access, so light submodules (``ml_platform.spec``, ``ml_platform.drift``,
...) can be imported by the serving process without loading Dagster.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import Definitions

    defs: Definitions

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from ml_platform.definitions import defs

        return defs
    raise AttributeError(f"module 'ml_platform' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
