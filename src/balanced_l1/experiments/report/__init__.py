"""What a comparison reports: tables, figures, the gradient balance, its prediction, and the words after the tables.

Before the package was split, ``balanced_l1.experiments.report`` was the module now at
:mod:`~balanced_l1.experiments.report.summary`; its names are still found here, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    """A name of :mod:`~balanced_l1.experiments.report.summary`, as the old module gave it (deprecated)."""
    summary = importlib.import_module(f"{__name__}.summary")  # not "from . import": that asks __getattr__ again

    if name.startswith("__") or not hasattr(summary, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{__name__}.{name} moved to {summary.__name__}.{name}; import it from there", DeprecationWarning, stacklevel=2
    )
    return getattr(summary, name)
