"""Deprecated module paths: a module that moved still imports at its old path, with a ``DeprecationWarning``.

:func:`keep_old_paths` installs one finder on ``sys.meta_path`` per package; importing ``package.old`` then
gives the module at ``package.new`` itself (the same object, so private names and monkeypatching work too).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, package: str, moved: Mapping[str, str]) -> None:
        self.package = package
        self.moved = dict(moved)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        if prefix != self.package or name not in self.moved:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = f"{self.package}.{self.moved[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported at its new place."""


def keep_old_paths(package: str, moved: Mapping[str, str]) -> None:
    """Let ``package.<old>`` import as ``package.<moved[old]>``, with a ``DeprecationWarning``, once per package.

    Args:
        package: the package's dotted name.
        moved: old module name (directly in ``package``) -> its new dotted path relative to ``package``.
    """
    if not any(isinstance(f, _MovedModuleFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder(package, moved))
