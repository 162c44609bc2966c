"""Import mmdetection 3.3's pure-Python Libra pieces without its compiled ops (mmcv-lite has none).

``import mmdet.models`` imports every model, some of which load mmcv's compiled ops at import time. The
classes compared here (``IoUBalancedNegSampler``, ``InstanceBalancedPosSampler``, ``BFP``) never call a
compiled op, so their modules are loaded directly: the ``mmdet.models`` packages on the way are
registered as empty packages (their ``__init__`` is not run), and where ``mmcv.ops`` cannot be imported
its modules are stand-ins whose every function raises if called.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import pytest

_PACKAGES = (
    "mmdet.models",
    "mmdet.models.necks",
    "mmdet.models.task_modules",
    "mmdet.models.task_modules.assigners",
    "mmdet.models.task_modules.samplers",
)


class _CompiledOpsUnavailable(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"{self.__name__}.{name} is a compiled op, not available in mmcv-lite")

        return unavailable


class _StandInOps(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _CompiledOpsUnavailable(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the stand-in has no code."""


def _ensure_ops_importable() -> None:
    try:
        importlib.import_module("mmcv.ops")
    except ImportError:
        for name in [n for n in sys.modules if n == "mmcv.ops" or n.startswith("mmcv.ops.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StandInOps())


def load_mmdet() -> dict[str, Any]:
    """Return mmdetection's ``IoUBalancedNegSampler``, ``InstanceBalancedPosSampler``, ``AssignResult``, ``BFP``
    and mmcv's ``NonLocal2d``; skip the test when mmdet or mmcv is not installed."""
    mmdet = pytest.importorskip("mmdet")
    pytest.importorskip("mmcv")
    pytest.importorskip("mmengine")
    _ensure_ops_importable()
    root = Path(mmdet.__file__).parent
    for name in _PACKAGES:
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = package
    assign_result = importlib.import_module("mmdet.models.task_modules.assigners.assign_result")
    sys.modules["mmdet.models.task_modules.assigners"].AssignResult = assign_result.AssignResult
    samplers = "mmdet.models.task_modules.samplers"
    return {
        "AssignResult": assign_result.AssignResult,
        "IoUBalancedNegSampler": importlib.import_module(f"{samplers}.iou_balanced_neg_sampler").IoUBalancedNegSampler,
        "InstanceBalancedPosSampler": importlib.import_module(
            f"{samplers}.instance_balanced_pos_sampler"
        ).InstanceBalancedPosSampler,
        "BFP": importlib.import_module("mmdet.models.necks.bfp").BFP,
        "NonLocal2d": importlib.import_module("mmcv.cnn.bricks").NonLocal2d,
    }
