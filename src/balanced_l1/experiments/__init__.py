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

from typing import Any

from balanced_l1._moved import keep_old_paths

__all__ = ["load_trained_model"]

#: The old module names, directly in this package, and where each module lives now.
_DATA = ("coco_data", "coco_annotations", "synthetic", "loader", "images", "datasets", "data_errors")
_RUN = ("train", "checkpoint", "distributed", "schedule", "evaluate", "trained", "runlog", "parallel")
_REPORT = ("balance", "pictures")
#: The old module names, directly in this package, and where each module lives now.
MOVED_MODULES = {
    **{name: f"data.{name}" for name in _DATA},
    **{name: f"run.{name}" for name in _RUN},
    **{name: f"report.{name}" for name in _REPORT},
}


keep_old_paths(__name__, MOVED_MODULES)


def __getattr__(name: str) -> Any:
    """``load_trained_model`` (:mod:`~balanced_l1.experiments.run.trained`), imported when first asked for."""
    if name == "load_trained_model":
        from balanced_l1.experiments.run.trained import load_trained_model

        return load_trained_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
