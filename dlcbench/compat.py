"""The pre-0.2 plugin import path ``compilers.base`` (and ``compilers.registry``, ``compilers.testing``).

Out-of-tree adapters written before dlcbench moved under one namespace import ``from compilers.base import
Adapter``. While dlcbench is imported, those names resolve to ``dlcbench.compilers.*`` with a
:class:`DeprecationWarning`; nothing is installed as a top-level ``compilers`` package, and a real package of
that name elsewhere on ``sys.path`` always wins. Planned for removal in dlcbench 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

OLD_PACKAGE = "compilers"
#: Old module names that keep working, mapped to their new homes.
ALIASES = {
    "compilers": "dlcbench.compilers",
    "compilers.base": "dlcbench.compilers.base",
    "compilers.registry": "dlcbench.compilers.registry",
    "compilers.testing": "dlcbench.compilers.testing",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class OldPluginPathFinder(importlib.abc.MetaPathFinder):
    """Resolves the names in :data:`ALIASES` to dlcbench's modules, warning once per name."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ALIASES:
            return None
        if fullname == OLD_PACKAGE and self._found_elsewhere(fullname):
            return None
        if fullname != OLD_PACKAGE and getattr(sys.modules.get(OLD_PACKAGE), "__name__", "") != ALIASES[OLD_PACKAGE]:
            return None
        new = ALIASES[fullname]
        warnings.warn(f"'{fullname}' is deprecated; import '{new}' instead (the old path goes in dlcbench 0.3)",
                      DeprecationWarning, stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), is_package=fullname == OLD_PACKAGE)

    def _found_elsewhere(self, fullname: str) -> bool:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, None)
            if spec is not None and spec.loader is not None:  # a bare folder named compilers/ is no package
                return True
        return False


def install() -> None:
    """Puts the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, OldPluginPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, OldPluginPathFinder())
