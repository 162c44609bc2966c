"""Experiments behind ``balanced-l1 compare``, in the order of the flow:

- :mod:`~balanced_l1.experiments.config` (the settings), :mod:`~balanced_l1.experiments.arms` and
  :mod:`~balanced_l1.experiments.arm_specs` (what is compared);
- :mod:`~balanced_l1.experiments.output_folder`: every name, path, reader and writer of the output folder;
- :mod:`~balanced_l1.experiments.data`: the embedded synthetic set and COCO-format data, read lazily;
- :mod:`~balanced_l1.experiments.run`: one run (:mod:`~balanced_l1.experiments.run.runner`), its training loop,
  checkpoints, evaluation, logs, trained model and worker processes;
- :mod:`~balanced_l1.experiments.report`: tables, figures, the gradient balance and its prediction;
- :mod:`~balanced_l1.experiments.compare` and :mod:`~balanced_l1.experiments.evaluate_out`: the ``compare`` and
  ``evaluate`` commands.

Nothing is imported here, so the command line stays light until ``compare`` runs; :func:`load_trained_model`
(from :mod:`~balanced_l1.experiments.run.trained_model`) is imported when first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_trained_model"]


def __getattr__(name: str) -> Any:
    """``load_trained_model`` (:mod:`~balanced_l1.experiments.run.trained_model`), imported when first asked for."""
    if name == "load_trained_model":
        from balanced_l1.experiments.run.trained_model import load_trained_model

        return load_trained_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
