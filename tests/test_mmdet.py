"""balanced_l1.mmdet: registration, a config build through mmdetection's MODELS, mmdetection's call, agreement.

mmdetection 3.3 installs from the package registry with mmengine and mmcv-lite. mmcv-lite has no
compiled ops, and ``mmdet.models`` imports them, so where it cannot be imported the fixture below
(1) tells mmdetection's registry that its modules are imported (otherwise every look-up in it tries
to import ``mmdet.models`` and fails), and (2) loads mmdetection's own ``balanced_l1_loss.py`` (and
its ``utils.py``) straight from the installed package, which registers mmdetection's
``BalancedL1Loss`` in its registry exactly as importing ``mmdet.models`` does. With a full mmcv build
the fixture imports ``mmdet.models`` and changes nothing.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from balanced_l1 import BalancedL1Params
from balanced_l1.reference import balanced_l1

mmdet = pytest.importorskip("mmdet")

from mmdet.registry import MODELS as MMDET_MODELS  # noqa: E402
from mmengine.config import Config  # noqa: E402

from balanced_l1 import mmdet as plugin  # noqa: E402

EPS = float(torch.finfo(torch.float32).eps)
CONFIG = """
custom_imports = dict(imports=["balanced_l1.mmdet"], allow_failed_imports=False)
model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_bbox=dict(type="balanced_l1.BalancedL1Loss", alpha=0.4, gamma=1.2, beta=0.5, loss_weight=2.0)
        )
    )
)
"""


def _load_mmdet_loss_file() -> type:
    """Import mmdetection's balanced_l1_loss.py (and the utils.py it imports) without mmdet.models."""
    package = types.ModuleType("_mmdet_losses")
    package.__path__ = [str(Path(mmdet.__file__).parent / "models" / "losses")]
    sys.modules["_mmdet_losses"] = package
    return importlib.import_module("_mmdet_losses.balanced_l1_loss").BalancedL1Loss


@pytest.fixture(scope="module")
def mmdet_loss() -> Iterator[type]:
    """mmdetection's own BalancedL1Loss class, registered in its MODELS registry."""
    imported = MMDET_MODELS._imported
    try:
        importlib.import_module("mmdet.models")
    except ModuleNotFoundError as error:
        if error.name != "mmcv._ext":
            raise
        MMDET_MODELS._imported = True
    registered = MMDET_MODELS.module_dict.get("BalancedL1Loss")
    yield registered if registered is not None else _load_mmdet_loss_file()
    MMDET_MODELS._imported = imported


def test_our_loss_is_registered_in_its_own_scope_under_mmdetection() -> None:
    assert plugin.MODELS.scope == "balanced_l1"
    assert plugin.MODELS.module_dict["BalancedL1Loss"] is plugin.BalancedL1Loss
    assert MMDET_MODELS.children["balanced_l1"] is plugin.MODELS
    assert issubclass(plugin.BalancedL1Loss, torch.nn.Module)


def test_mmdetection_keeps_its_own_balanced_l1_loss(mmdet_loss: type) -> None:
    assert MMDET_MODELS.get("BalancedL1Loss") is mmdet_loss
    assert MMDET_MODELS.get("mmdet.BalancedL1Loss") is mmdet_loss
    assert MMDET_MODELS.get("balanced_l1.BalancedL1Loss") is plugin.BalancedL1Loss
    assert mmdet_loss is not plugin.BalancedL1Loss


def test_registering_a_duplicate_name_raises_key_error(mmdet_loss: type) -> None:
    with pytest.raises(KeyError, match="BalancedL1Loss is already registered in model at"):
        MMDET_MODELS.register_module(name="BalancedL1Loss", module=plugin.BalancedL1Loss)
    with pytest.raises(KeyError, match="BalancedL1Loss is already registered in model at"):
        plugin.MODELS.register_module(name="BalancedL1Loss", module=mmdet_loss)
    assert MMDET_MODELS.get("BalancedL1Loss") is mmdet_loss


def test_config_with_custom_imports_builds_our_loss_through_mmdetection(mmdet_loss: type, tmp_path: Path) -> None:
    path = tmp_path / "libra_scaled.py"
    path.write_text(CONFIG)
    config = Config.fromfile(str(path))
    loss = MMDET_MODELS.build(config.model.roi_head.bbox_head.loss_bbox)
    assert type(loss) is plugin.BalancedL1Loss
    assert (loss.alpha, loss.gamma, loss.beta, loss.loss_weight) == (0.4, 1.2, 0.5, 2.0)
    assert (loss.reduction, loss.formulation) == ("mean", "scaled")


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")  # mmengine's import
def test_readme_config_switches_libra_rcnn_to_our_scaled_loss(mmdet_loss: type, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"^## mmdetection\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert section
    (code,) = re.findall(r"```python\n(.*?)```", section.group(1), flags=re.S)
    path = tmp_path / "libra_balanced_l1.py"
    path.write_text(code)
    config = Config.fromfile(str(path))
    assert config.model.neck[1].type == "BFP"  # the Libra R-CNN base config was resolved
    loss = MMDET_MODELS.build(config.model.roi_head.bbox_head.loss_bbox)
    assert type(loss) is plugin.BalancedL1Loss
    assert (loss.alpha, loss.gamma, loss.beta, loss.loss_weight, loss.formulation) == (0.5, 1.5, 1.0, 1.0, "scaled")


def test_bad_config_value_is_reported_by_the_build(mmdet_loss: type) -> None:
    with pytest.raises(ValueError, match=r"beta must be finite and > 0, got 0.0"):
        MMDET_MODELS.build({"type": "balanced_l1.BalancedL1Loss", "beta": 0.0})


def _bbox_head_inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """What BBoxHead.loss_and_target holds: predictions of the positives, targets and weights of all RoIs."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (32,), generator=gen)  # 0 ... 2 foreground classes, 3 = background
    pos_inds = (labels >= 0) & (labels < 3)
    bbox_targets = torch.randn(32, 4, generator=gen, dtype=dtype)
    bbox_weights = torch.zeros(32, 4, dtype=dtype)
    bbox_weights[pos_inds] = 1.0
    pos_bbox_pred = torch.randn(int(pos_inds.sum()), 4, generator=gen, dtype=dtype, requires_grad=True)
    return {"pred": pos_bbox_pred, "targets": bbox_targets, "weights": bbox_weights, "pos": pos_inds}


def test_call_as_bbox_head_loss_and_target_makes_it(mmdet_loss: type) -> None:
    loss_bbox = MMDET_MODELS.build({"type": "balanced_l1.BalancedL1Loss", "beta": 0.5, "loss_weight": 2.0})
    x = _bbox_head_inputs()
    pos = x["pos"].type(torch.bool)
    value = loss_bbox(
        x["pred"], x["targets"][pos], x["weights"][pos], avg_factor=x["targets"].size(0), reduction_override=None
    )
    difference = (x["pred"] - x["targets"][pos]).detach().double().numpy()
    expected = 2.0 * balanced_l1(difference, BalancedL1Params(beta=0.5)).sum() / (32 + EPS)
    assert 0 < pos.sum() < 32
    assert value.ndim == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert x["pred"].grad is not None and torch.isfinite(x["pred"].grad).all()


def test_extra_keyword_arguments_are_accepted_and_change_nothing() -> None:
    loss_bbox = plugin.MODELS.build({"type": "BalancedL1Loss"})
    x = _bbox_head_inputs()
    target = x["targets"][: len(x["pred"])]
    plain = loss_bbox(x["pred"], target)
    assert torch.equal(loss_bbox(x["pred"], target, None, None, None, ignored_flag=True, extra=3), plain)


def test_default_formulation_is_scaled_and_differs_from_mmdetection_below_beta_one(mmdet_loss: type) -> None:
    ours = MMDET_MODELS.build({"type": "balanced_l1.BalancedL1Loss", "beta": 0.11})
    theirs = MMDET_MODELS.build({"type": "BalancedL1Loss", "beta": 0.11})
    pred, target = torch.tensor([0.05, 0.5], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    expected = balanced_l1(np.array([0.05, 0.5]), BalancedL1Params(beta=0.11)).mean()
    assert ours(pred, target).item() == pytest.approx(expected, rel=1e-12)
    assert abs(ours(pred, target).item() - theirs(pred, target).item()) > 1e-2


CASES: list[dict[str, Any]] = [
    {"beta": 1.0},
    {"beta": 0.11},
    {"beta": 0.5, "alpha": 0.3, "gamma": 2.0, "loss_weight": 1.7},
    {"beta": 2.5, "reduction": "sum"},
]


@pytest.mark.parametrize("params", CASES, ids=[str(case) for case in CASES])
@pytest.mark.parametrize("call", ["plain", "weight+avg_factor", "override:none", "override:sum", "empty"])
def test_mmdet_formulation_agrees_with_mmdetection_to_1e9_in_float64(
    params: dict[str, Any], call: str, mmdet_loss: type
) -> None:
    ours = MMDET_MODELS.build({"type": "balanced_l1.BalancedL1Loss", "formulation": "mmdet", **params})
    theirs = MMDET_MODELS.build({"type": "BalancedL1Loss", **params})
    gen = torch.Generator().manual_seed(1)
    rows = 0 if call == "empty" else 64
    pred = (torch.randn(rows, 4, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randn(rows, 4, generator=gen, dtype=torch.float64)
    kwargs: dict[str, Any] = {}
    if call == "weight+avg_factor":
        kwargs = {"weight": torch.rand(rows, 4, generator=gen, dtype=torch.float64), "avg_factor": 40.0}
    elif call.startswith("override:"):
        kwargs = {"reduction_override": call.split(":")[1]}
    if params.get("reduction") == "sum" and "avg_factor" in kwargs:  # both refuse, as the contract says
        for loss in (ours, theirs):
            with pytest.raises(ValueError, match="avg_factor can not be used with reduction"):
                loss(pred, target, **kwargs)
        return
    values = []
    grads = []
    for loss in (ours, theirs):
        value = loss(pred, target, **kwargs)
        (grad,) = torch.autograd.grad(value.sum(), pred)
        values.append(value.detach())
        grads.append(grad)
    assert values[0].shape == values[1].shape
    torch.testing.assert_close(values[0], values[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
