"""``tools/build_mmcv.py`` loaded as a module (it is a script, not part of the package), for the tests that use it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_build_tool() -> ModuleType:
    """A fresh module of ``tools/build_mmcv.py``."""
    spec = importlib.util.spec_from_file_location("_balanced_l1_build_mmcv", ROOT / "tools" / "build_mmcv.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
