"""The lines docs/torchvision.md adds to torchvision's references/detection scripts, run in an equivalent loop.

``_train_one_epoch`` is written here in the shape of ``engine.py``'s ``train_one_epoch`` (same signature, same
order: forward, summed loss, finiteness check, zero_grad, backward, optimizer step), not copied from it, with the
monitor's lines of the docs; ``_main`` does what ``train.py``'s ``main`` does around the model (build it with
``torchvision.models.get_model``, switch it, move it, wrap it in DDP, keep ``model_without_ddp``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

from balanced_l1.detection import GradientBalanceMonitor, use_balanced_l1

pytestmark = pytest.mark.slow


def _data(images: int = 4) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(images):
        x0, y0 = torch.randint(10, 120, (2,), generator=generator).tolist()
        box = torch.tensor([[x0, y0, x0 + 120.0, y0 + 100.0]])
        samples.append((torch.rand(3, 320, 320, generator=generator), {"boxes": box, "labels": torch.tensor([1])}))
    return samples


def _collate(batch: list[Any]) -> tuple[Any, ...]:
    return tuple(zip(*batch, strict=True))


def _train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Any,
    device: torch.device,
    epoch: int,
    print_freq: int,
    scaler: Any = None,
    monitor: GradientBalanceMonitor | None = None,
) -> list[dict[str, float]]:
    model.train()
    logged = []
    for images, targets in data_loader:
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        assert math.isfinite(losses.item()), loss_dict
        optimizer.zero_grad()
        losses.backward()
        row = {"loss": losses.item()}
        if monitor is not None:  # the docs' three lines (the logger's update is this dict's)
            balance = monitor.step()["roi_heads"]
            row.update({name: value for name, value in balance.items() if value is not None})
        optimizer.step()
        logged.append(row)
    return logged


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[None]:
    """A gloo process group of one rank, as torchrun gives train.py with --nproc_per_node 1."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _main(device: torch.device) -> tuple[nn.Module, nn.Module, GradientBalanceMonitor, list[dict[str, float]]]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None, num_classes=3
    )
    use_balanced_l1(model, placement="roi")
    monitor = GradientBalanceMonitor(model, task_balance_every=10)
    model.to(device)
    model_without_ddp = model
    model = nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    data_loader = torch.utils.data.DataLoader(_data(), batch_size=2, collate_fn=_collate)
    logged = _train_one_epoch(model, optimizer, data_loader, device, 0, 20, monitor=monitor)
    return model, model_without_ddp, monitor, logged


def test_the_patched_train_py_and_engine_py_train_with_balanced_l1_in_the_roi_head(one_process_group: None) -> None:
    model, model_without_ddp, monitor, logged = _main(torch.device("cpu"))
    assert model_without_ddp.roi_heads.balanced_l1_config.loss == "balanced_l1"
    assert not hasattr(model_without_ddp.rpn, "balanced_l1_config")  # placement="roi": torchvision's smooth L1
    assert len(logged) == 2 and all(math.isfinite(row["loss"]) for row in logged)
    assert "inlier_fraction" in logged[0] and "box_cls_gradient_ratio" in logged[0]  # measured at the first step
    assert len(monitor.history) == 2 and set(monitor.history[0]) == {"roi_heads", "rpn"}
    model.eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 320, 320)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}
    monitor.remove()


def test_the_ddp_wrapper_is_refused_with_the_hint_to_pass_module(one_process_group: None) -> None:
    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None, num_classes=3
    )
    wrapped = nn.parallel.DistributedDataParallel(model)
    with pytest.raises(TypeError, match=r"pass the bare model, e.g. ddp_model.module"):
        use_balanced_l1(wrapped, placement="roi")
    with pytest.raises(TypeError, match=r"pass the bare model, e.g. ddp_model.module"):
        GradientBalanceMonitor(wrapped)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("retinanet_resnet50_fpn_v2", "RetinaNet"), ("ssdlite320_mobilenet_v3_large", "SSD")],
)
def test_one_stage_models_need_no_placement_and_say_so(name: str, kind: str) -> None:
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=3)
    assert isinstance(model, (RetinaNet, SSD))
    message = rf"^{kind} has neither an RPN nor RoI heads, it has one box loss: leave placement"
    with pytest.raises(ValueError, match=message):
        use_balanced_l1(model, placement="roi")
    assert use_balanced_l1(model) is model


def _detections(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    model.eval()
    with torch.no_grad():
        return model([image for image, _ in _data(2)])


def _model(patched: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None, num_classes=3
    )
    return use_balanced_l1(model, placement="roi") if patched else model


@pytest.mark.parametrize(("saved_patched", "loaded_patched"), [(True, False), (False, True)])
def test_a_state_dict_loads_between_patched_and_unpatched_models(
    tmp_path: Path, saved_patched: bool, loaded_patched: bool
) -> None:
    saved = _model(saved_patched, seed=0)
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": saved.state_dict()}, checkpoint)
    loaded = _model(loaded_patched, seed=1)  # other initial weights, so the load must replace every tensor
    result = loaded.load_state_dict(torch.load(checkpoint, weights_only=True)["model"], strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert saved.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(saved.state_dict()[k], loaded.state_dict()[k]) for k in saved.state_dict())
    for mine, theirs in zip(_detections(saved), _detections(loaded), strict=True):
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
