"""GradientBalanceMonitor: the paper's statistics, checked against float64 formulas; it changes nothing."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.functional import l1_loss, smooth_l1_loss
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead

from balanced_l1 import balanced_l1_loss
from balanced_l1.detection import (
    GradientBalanceMonitor,
    build_small_faster_rcnn,
    use_balanced_l1,
    use_box_loss,
    use_iou_balanced_sampling,
)
from balanced_l1.detection.gradient_balance import (
    _TaskBalance,
    box_gradient_statistics,
    is_inlier,
    second_half_means,
)
from balanced_l1.params import BalancedL1Params
from balanced_l1.reference import balanced_l1_grad, smooth_l1_grad

# Encoded errors of 6 positive samples (4 deltas each): inliers and outliers under smooth L1 (beta 1) summed.
ERRORS = np.array(
    [
        [0.05, -0.02, 0.10, 0.00],  # inlier
        [0.30, 0.40, -0.20, 0.10],  # inlier
        [0.90, 0.50, 0.00, 0.00],  # loss 0.405 + 0.125 = 0.53: inlier
        [1.20, 0.10, 0.00, 0.00],  # 0.7 + 0.005: inlier
        [1.50, 0.20, 0.30, -0.40],  # 1.0 + 0.02 + 0.045 + 0.08 = 1.145: outlier
        [-3.00, 2.00, 0.50, 0.00],  # outlier
    ]
)
INLIER = np.array([True, True, True, True, False, False])


def _l1_grad(x: np.ndarray) -> np.ndarray:
    return np.sign(x)


# name -> (the loss summed, as the model would use it; its float64 gradient from the formula)
LOSSES = {
    "smooth_l1_beta1": (lambda p, t: smooth_l1_loss(p, t, beta=1.0, reduction="sum"), lambda x: smooth_l1_grad(x, 1.0)),
    "smooth_l1_beta1/9": (
        lambda p, t: smooth_l1_loss(p, t, beta=1 / 9, reduction="sum"),
        lambda x: smooth_l1_grad(x, 1 / 9),
    ),
    "l1": (lambda p, t: l1_loss(p, t, reduction="sum"), _l1_grad),
    "balanced_l1_scaled": (
        lambda p, t: balanced_l1_loss(p, t, beta=0.11, reduction="sum"),
        lambda x: balanced_l1_grad(x, BalancedL1Params(beta=0.11)),
    ),
    "balanced_l1_mmdet": (
        lambda p, t: balanced_l1_loss(p, t, beta=0.11, reduction="sum", formulation="mmdet"),
        lambda x: balanced_l1_grad(x, BalancedL1Params(beta=0.11, formulation="mmdet")),
    ),
    "balanced_l1_beta1": (lambda p, t: balanced_l1_loss(p, t, reduction="sum"), balanced_l1_grad),
}


def _expected(grad: np.ndarray, inlier: np.ndarray) -> dict[str, float]:
    magnitude = np.abs(grad).sum(axis=1)
    g_in, g_out = magnitude[inlier], magnitude[~inlier]
    return {
        "inlier_fraction": inlier.mean(),
        "inlier_outlier_gradient_ratio": g_in.mean() / g_out.mean(),
        "inlier_gradient_share": g_in.sum() / magnitude.sum(),
    }


def test_the_partition_is_smooth_l1_beta1_summed_over_the_four_deltas_below_one() -> None:
    target = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(6, 4)
    assert is_inlier(target + torch.from_numpy(ERRORS), target).tolist() == INLIER.tolist()
    exactly_one = torch.tensor([[1.5, 0.0, 0.0, 0.0]])  # smooth L1 = 1.0: an outlier (loss >= 1.0)
    assert is_inlier(exactly_one, torch.zeros(1, 4)).tolist() == [False]


@pytest.mark.parametrize("name", LOSSES)
def test_sample_statistics_match_a_float64_computation_from_the_formulas(name: str) -> None:
    loss, formula_grad = LOSSES[name]
    target = torch.linspace(-0.5, 0.5, 24, dtype=torch.float64).reshape(6, 4)
    pred = (target + torch.from_numpy(ERRORS)).requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(pred, target), pred)
    np.testing.assert_allclose(grad.numpy(), formula_grad(ERRORS), rtol=1e-12, atol=1e-15)
    stats = box_gradient_statistics(pred.detach(), target, grad)
    for key, value in _expected(formula_grad(ERRORS), INLIER).items():
        assert stats[key] == pytest.approx(value, rel=1e-12), key


def test_the_paper_baseline_gives_inliers_less_gradient_than_balanced_l1_and_l1_gives_all_the_same() -> None:
    ratio = {
        name: _expected(grad(ERRORS), INLIER)["inlier_outlier_gradient_ratio"] for name, (_, grad) in LOSSES.items()
    }
    assert ratio["l1"] == pytest.approx((11 / 4) / (7 / 2))  # L1: 1 per non-zero delta
    assert ratio["smooth_l1_beta1"] < ratio["balanced_l1_beta1"] < ratio["l1"]


def test_undefined_statistics_are_none() -> None:
    zeros = torch.zeros(3, 4)
    inliers_only = box_gradient_statistics(zeros, zeros, torch.ones(3, 4))
    assert inliers_only["inlier_fraction"] == 1.0 and inliers_only["inlier_outlier_gradient_ratio"] is None
    empty = box_gradient_statistics(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 4))
    assert all(value is None for value in empty.values())
    no_gradient = box_gradient_statistics(zeros, zeros, zeros)
    assert no_gradient["inlier_gradient_share"] is None


def test_sample_statistics_reject_shapes_that_are_not_p_by_4() -> None:
    with pytest.raises(ValueError, match=r"must all be \(P, 4\), got \(3, 4\), \(3, 4\), \(3, 2\)"):
        box_gradient_statistics(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 2))


class _TwoTasks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Linear(5, 3).double()
        self.box = nn.Linear(5, 8).double()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls(x), self.box(x)


def test_task_balance_separates_the_two_gradients_that_reach_the_shared_representation() -> None:
    torch.manual_seed(0)
    module = _TwoTasks()
    shared = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    task = _TaskBalance(module, lambda out: (out[0], out[1]))
    task.armed = True
    hook = module.register_forward_hook(lambda m, i, o: task.capture(i, o))
    cls_out, box_out = module(shared)
    cls_loss, box_loss = 0.7 * cls_out.square().sum(), 2.5 * box_out.abs().sum()
    (cls_loss + box_loss).backward()
    box_sq, cls_sq = task.norms().tolist()  # type: ignore[union-attr]
    hook.remove()
    (g_cls,) = torch.autograd.grad(0.7 * module(shared)[0].square().sum(), shared)
    (g_box,) = torch.autograd.grad(2.5 * module(shared)[1].abs().sum(), shared)
    assert math.sqrt(box_sq) == pytest.approx(float(g_box.norm()), rel=1e-12)
    assert math.sqrt(cls_sq) == pytest.approx(float(g_cls.norm()), rel=1e-12)
    assert module.cls.weight.grad is not None and module.box.weight.grad is not None


def _batch(n: int = 2, size: int = 128) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(3, size, size, generator=gen) for _ in range(n)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 120.0, 110.0]]), "labels": torch.tensor([1, 2])}
        for _ in range(n)
    ]
    return images, targets


def _train(model: nn.Module, monitor: bool, iterations: int = 3) -> tuple[list[float], nn.Module, list]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    watch = GradientBalanceMonitor(model, task_balance_every=2) if monitor else None
    losses, records = [], []
    images, targets = _batch()
    for _ in range(iterations):
        out = model(images, targets)
        total = sum(out.values())
        optimizer.zero_grad()
        total.backward()
        if watch is not None:
            records.append(watch.step())
        optimizer.step()
        losses.append(float(total.detach()))
    if watch is not None:
        watch.remove()
    return losses, model, records


def _small(configure: object = None) -> nn.Module:
    torch.manual_seed(0)
    model = build_small_faster_rcnn(3)
    if callable(configure):
        configure(model)
    return model


def _libra_parts(model: nn.Module) -> None:
    use_iou_balanced_sampling(model)
    use_balanced_l1(model)


@pytest.mark.parametrize("configure", [None, _libra_parts], ids=["torchvision_losses", "balanced_l1_iou_sampling"])
def test_training_with_and_without_the_monitor_is_bit_identical(configure: object) -> None:
    torch.manual_seed(1)
    losses_off, model_off, _ = _train(_small(configure), monitor=False)
    torch.manual_seed(1)
    losses_on, model_on, records = _train(_small(configure), monitor=True)
    assert losses_on == losses_off
    for (name, a), (_, b) in zip(model_on.state_dict().items(), model_off.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert records[0]["roi_heads"]["inlier_fraction"] is not None
    assert records[0]["roi_heads"]["box_cls_gradient_ratio"] is not None  # iteration 0: measured
    assert records[1]["roi_heads"]["box_cls_gradient_ratio"] is None  # every 2nd iteration only
    assert records[2]["roi_heads"]["box_cls_gradient_ratio"] is not None
    assert records[0]["rpn"]["box_cls_gradient_ratio"] is None


def test_the_monitored_roi_statistics_equal_those_of_the_deltas_the_loss_saw() -> None:
    model = _small(lambda m: use_box_loss(m, "smooth_l1", beta=1.0))
    with torch.no_grad():  # large deltas, so that there are outliers as well as inliers
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(8.0)
    monitor = GradientBalanceMonitor(model)  # first, so that the wrappers below call the monitored methods
    seen: dict[str, Tensor] = {}
    original = model.roi_heads.box_predictor.forward

    def keep(x: Tensor) -> tuple[Tensor, Tensor]:
        class_logits, box_regression = original(x)
        box_regression.register_hook(lambda g: seen.__setitem__("grad", g))
        seen["pred"] = box_regression
        return class_logits, box_regression

    model.roi_heads.box_predictor.forward = keep  # type: ignore[method-assign]
    samples: dict[str, Tensor] = {}
    select = model.roi_heads.select_training_samples

    def keep_samples(proposals, targets):  # type: ignore[no-untyped-def]
        result = select(proposals, targets)
        samples["labels"], samples["targets"] = torch.cat(result[2]), torch.cat(result[3])
        return result

    model.roi_heads.select_training_samples = keep_samples  # type: ignore[method-assign]
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    record = monitor.step()["roi_heads"]
    labels = samples["labels"]
    positive = torch.where(labels > 0)[0]
    pick = (positive, labels[positive])
    pred = seen["pred"].detach().reshape(len(labels), -1, 4)[pick]
    grad = seen["grad"].reshape(len(labels), -1, 4)[pick]
    expected = box_gradient_statistics(pred, samples["targets"][positive], grad)
    assert 0.0 < expected["inlier_fraction"] < 1.0  # type: ignore[operator]
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, rel=1e-9), key


def test_under_cpu_autocast_the_task_balance_is_measured_in_the_forward_pass_precision() -> None:
    model = _small(use_balanced_l1)
    monitor = GradientBalanceMonitor(model)
    images, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    sum(v.float() for v in losses.values()).backward()
    record = monitor.step()["roi_heads"]
    assert record["box_cls_gradient_ratio"] is not None and math.isfinite(record["box_cls_gradient_ratio"])
    assert record["inlier_fraction"] is not None


def test_a_zero_box_loss_weight_gives_a_zero_box_classification_ratio() -> None:
    model = _small(lambda m: use_balanced_l1(m, loss_weight=0.0))
    monitor = GradientBalanceMonitor(model)
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    record = monitor.step()
    assert record["roi_heads"]["box_cls_gradient_ratio"] == 0.0
    assert record["roi_heads"]["inlier_gradient_share"] is None


def test_one_stage_models_report_one_head_with_finite_statistics() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.ReLU())
    backbone.out_channels = 8  # type: ignore[assignment]
    retinanet = RetinaNet(backbone, 3, anchor_generator=AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)))
    retinanet.transform.min_size, retinanet.transform.max_size = (128,), 128
    ssd = SSD(copy.deepcopy(backbone), DefaultBoxGenerator([[2]]), (128, 128), 3, head=SSDHead([8], [4], 3))
    images, targets = _batch()
    for model in (retinanet, use_balanced_l1(ssd)):
        monitor = GradientBalanceMonitor(model)
        sum(model(images, targets).values()).backward()
        record = monitor.step()
        assert set(record) == {"head"}
        assert record["head"]["inlier_fraction"] is not None
        assert all(v is None or math.isfinite(v) for v in record["head"].values()), record
        assert record["head"]["box_cls_gradient_ratio"] is not None
        monitor.remove()


def test_remove_restores_the_classes_and_hooks() -> None:
    model = _small(use_balanced_l1)
    classes = (type(model.rpn), type(model.roi_heads))
    monitor = GradientBalanceMonitor(model)
    assert type(model.roi_heads) is not classes[1]
    monitor.remove()
    assert (type(model.rpn), type(model.roi_heads)) == classes
    assert not model.roi_heads.box_predictor._forward_hooks and not model._forward_pre_hooks


def test_a_monitor_attached_before_a_mixin_that_bypasses_it_says_so() -> None:
    model = _small()
    monitor = GradientBalanceMonitor(model)
    use_balanced_l1(model)  # puts its RPN and RoI-head methods above the monitor's
    use_iou_balanced_sampling(model)
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    with pytest.raises(RuntimeError, match="attach it after use_balanced_l1"):
        monitor.step()


def test_bad_models_and_settings_are_named() -> None:
    with pytest.raises(TypeError, match=r"supports torchvision FasterRCNN.*got Linear"):
        GradientBalanceMonitor(nn.Linear(2, 2))
    wrapped = nn.Module()
    wrapped.module = FasterRCNN(nn.Conv2d(3, 8, 3), 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass the bare model"):
        GradientBalanceMonitor(wrapped)
    for bad in (0, -1, np.int64(0)):
        with pytest.raises(ValueError, match=re.escape(f"task_balance_every must be an integer >= 1, got {bad!r}")):
            GradientBalanceMonitor(_small(), task_balance_every=bad)  # type: ignore[arg-type]
    for bad in (1.5, True, "2", np.float64(2.0)):
        with pytest.raises(TypeError, match=re.escape(f"task_balance_every must be an integer, got {bad!r} of type")):
            GradientBalanceMonitor(_small(), task_balance_every=bad)  # type: ignore[arg-type]


def test_a_numpy_integer_task_balance_every_is_accepted_as_an_int() -> None:
    monitor = GradientBalanceMonitor(_small(), task_balance_every=np.int64(2))
    assert monitor.task_balance_every == 2 and type(monitor.task_balance_every) is int
    monitor.remove()


def test_an_unknown_box_loss_is_named_with_the_valid_ones_before_the_model_changes() -> None:
    model = _small()
    classes = (type(model.rpn), type(model.roi_heads))
    valid = "balanced_l1, smooth_l1, l1, giou, diou, ciou"
    with pytest.raises(ValueError, match=rf"loss must be one of {valid}, got 'huber'"):
        use_box_loss(model, "huber")
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        use_box_loss(model, "smooth_l1", beta=0.0)
    assert (type(model.rpn), type(model.roi_heads)) == classes


def test_second_half_means_skip_undefined_values() -> None:
    history = [
        {"rpn": {"inlier_fraction": 0.1, "box_cls_gradient_ratio": None}},
        {"rpn": {"inlier_fraction": 0.2, "box_cls_gradient_ratio": None}},
        {"rpn": {"inlier_fraction": 0.4, "box_cls_gradient_ratio": 2.0}},
        {"rpn": {"inlier_fraction": 0.6, "box_cls_gradient_ratio": None}},
    ]
    means = second_half_means(history)["rpn"]
    assert means["inlier_fraction"] == pytest.approx(0.5)
    assert means["box_cls_gradient_ratio"] == 2.0


# one monitor per model; copies and pickles carry none (issue 22)


def _one_step(model: nn.Module, monitor: GradientBalanceMonitor | None = None) -> dict | None:
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    return monitor.step() if monitor is not None else None


def test_a_second_monitor_on_the_same_model_is_refused_and_the_first_keeps_working() -> None:
    model = _small(use_balanced_l1)
    first = GradientBalanceMonitor(model)
    with pytest.raises(ValueError, match=r"already has a GradientBalanceMonitor.*call remove\(\) on that monitor"):
        GradientBalanceMonitor(model)
    assert _one_step(model, first)["roi_heads"]["inlier_fraction"] is not None  # type: ignore[index]
    first.remove()
    second = GradientBalanceMonitor(model)  # after remove(), a new monitor attaches and records
    assert _one_step(model, second)["roi_heads"]["inlier_fraction"] is not None  # type: ignore[index]
    second.remove()
    assert not model._forward_pre_hooks and not model.roi_heads.box_predictor._forward_hooks


def test_a_removed_monitor_says_so_instead_of_recording_nothing() -> None:
    model = _small()
    monitor = GradientBalanceMonitor(model)
    monitor.remove()
    _one_step(model)
    with pytest.raises(RuntimeError, match="was removed from its model"):
        monitor.step()


def _assert_unmonitored(model: nn.Module, classes: tuple[type, ...]) -> None:
    assert (type(model), type(model.rpn), type(model.roi_heads), type(model.roi_heads.box_predictor)) == classes
    for module in model.modules():
        assert "_balanced_l1_gradient_monitor" not in module.__dict__, type(module).__name__
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__


def _classes(model: nn.Module) -> tuple[type, ...]:
    return type(model), type(model.rpn), type(model.roi_heads), type(model.roi_heads.box_predictor)


def test_a_monitored_model_saves_and_pickles_without_its_monitor() -> None:
    import io
    import pickle

    model = _small(use_balanced_l1)
    classes = _classes(model)
    monitor = GradientBalanceMonitor(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for loaded in (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(model))):
        _assert_unmonitored(loaded, classes)
        assert loaded.roi_heads.balanced_l1_config == model.roi_heads.balanced_l1_config  # other mixins are kept
        _one_step(loaded)
        GradientBalanceMonitor(loaded).remove()  # and it can get a monitor of its own
    assert _one_step(model, monitor)["roi_heads"]["inlier_fraction"] is not None  # type: ignore[index]


@pytest.mark.parametrize("copy_first", [True, False], ids=["copy_trains_first", "copy_trains_between"])
def test_training_a_deep_copy_leaves_the_original_monitor_alone(copy_first: bool) -> None:
    model = _small(use_balanced_l1)
    classes = _classes(model)
    monitor = GradientBalanceMonitor(model)
    twin = copy.deepcopy(model)
    _assert_unmonitored(twin, classes)
    images, targets = _batch()
    if copy_first:
        _one_step(twin)  # used to mark the original's monitor as trained, whose step() then raised
    torch.manual_seed(5)
    sum(model(images, targets).values()).backward()
    if not copy_first:
        _one_step(twin)  # between the original's backward and its step
    record = monitor.step()
    fresh = _small(use_balanced_l1)  # the same weights, never copied
    fresh_monitor = GradientBalanceMonitor(fresh)
    torch.manual_seed(5)
    assert record == _one_step(fresh, fresh_monitor)  # the original recorded exactly its own pass
    assert len(monitor.history) == 1
    twin_monitor = GradientBalanceMonitor(twin)  # the copy gets a monitor of its own, which works
    assert _one_step(twin, twin_monitor)["roi_heads"]["inlier_fraction"] is not None  # type: ignore[index]


def test_the_monitor_itself_cannot_be_copied_or_pickled_and_says_what_to_do() -> None:
    import pickle

    monitor = GradientBalanceMonitor(_small())
    for attempt in (copy.deepcopy, copy.copy, pickle.dumps):
        with pytest.raises(TypeError, match=r"cannot be copied or pickled; copy or pickle the model"):
            attempt(monitor)
