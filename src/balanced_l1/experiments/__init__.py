"""Experiments behind ``balanced-l1 compare``, in the order of the flow:

- :mod:`~balanced_l1.experiments.config` (the settings), :mod:`~balanced_l1.experiments.arms` and
  :mod:`~balanced_l1.experiments.arm_specs` (what is compared);
- :mod:`~balanced_l1.experiments.data`: the embedded synthetic set and COCO-format data, read lazily;
- :mod:`~balanced_l1.experiments.run`: one run (:mod:`~balanced_l1.experiments.run.runner`), its training loop,
  checkpoints, evaluation, logs, trained model and worker processes;
- :mod:`~balanced_l1.experiments.report`: tables, figures, the gradient balance and its prediction;
- :mod:`~balanced_l1.experiments.compare`: the orchestration, over :mod:`~balanced_l1.experiments.output_folder`.

Nothing is imported here, so the command line stays light until ``compare`` runs; :func:`load_trained_model`
(from :mod:`~balanced_l1.experiments.run.trained`) is imported when first used. The modules that lived directly
in this package before it was split (``balanced_l1.experiments.train`` and the like) still import, with a
``DeprecationWarning`` naming their new place (``balanced_l1.experiments.report`` is now the package, whose
attributes include the old module's names: see :mod:`~balanced_l1.experiments.report.summary`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = ["load_trained_model"]

#: The old module names, directly in this package, and where each module lives now.
_DATA = ("coco_data", "coco_annotations", "synthetic", "loader", "images", "datasets", "data_errors")
_RUN = ("train", "checkpoint", "distributed", "schedule", "evaluate", "trained", "runlog", "parallel")
_REPORT = ("balance", "explain", "predict", "pictures")
#: The old module names, directly in this package, and where each module lives now.
MOVED_MODULES = {
    **{name: f"data.{name}" for name in _DATA},
    **{name: f"run.{name}" for name in _RUN},
    **{name: f"report.{name}" for name in _REPORT},
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``balanced_l1.experiments.<old>`` as the module at its new place, with a ``DeprecationWarning``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = f"{__name__}.{MOVED_MODULES[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported at its new place."""


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str) -> Any:
    """``load_trained_model`` (:mod:`~balanced_l1.experiments.run.trained`), imported when first asked for."""
    if name == "load_trained_model":
        from balanced_l1.experiments.run.trained import load_trained_model

        return load_trained_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
