"""ml_platform: an ML CI/CD platform on Dagster.

``ml_platform.defs`` is the code location's ``Definitions``
(``dagster dev`` / ``dagster job execute -m ml_platform``). It is built on
first access, so light submodules (``ml_platform.spec``, ``ml_platform.drift``,
...) can be imported by the serving process without loading Dagster.

The Dagster layer's source folder is also called ``defs`` (the subpackage
``ml_platform.defs``, loaded by :mod:`ml_platform.definitions`): its modules are
imported by their full names (``from ml_platform.defs.pipeline import ...``),
while the package attribute ``ml_platform.defs`` always means the ``Definitions``.
"""

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import Definitions

    defs: Definitions

__all__ = ["defs"]


class _PlatformModule(types.ModuleType):
    """Keeps ``ml_platform.defs`` bound to the code location, whatever imports the subpackage."""

    @property
    def defs(self) -> Any:
        from ml_platform.definitions import defs

        return defs

    @defs.setter
    def defs(self, value: Any) -> None:
        # The import system binds the subpackage ``ml_platform.defs`` here; it stays reachable through
        # sys.modules, and the attribute keeps meaning the Definitions.
        pass


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])


sys.modules[__name__].__class__ = _PlatformModule
