"""Experiments behind ``balanced-l1 compare``: data sets, training loop, COCO evaluation, reports.

Modules: :mod:`~balanced_l1.experiments.synthetic` (the embedded data set),
:mod:`~balanced_l1.experiments.coco_data` (COCO-format folders), :mod:`~balanced_l1.experiments.arms`
(the registry of compared configurations), :mod:`~balanced_l1.experiments.train`,
:mod:`~balanced_l1.experiments.evaluate`, :mod:`~balanced_l1.experiments.report` and
:mod:`~balanced_l1.experiments.compare` (orchestration). Nothing is imported here, so the command
line stays light until ``compare`` runs; :func:`load_trained_model` (from
:mod:`~balanced_l1.experiments.trained`) is imported when first used.
"""

from typing import Any

__all__ = ["load_trained_model"]


def __getattr__(name: str) -> Any:
    """``load_trained_model`` (:mod:`~balanced_l1.experiments.trained`), imported when first asked for."""
    if name == "load_trained_model":
        from balanced_l1.experiments.trained import load_trained_model

        return load_trained_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
