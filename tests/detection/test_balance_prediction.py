"""Predicting the gradient balance from recorded errors: equal to the monitor's own statistics, and the alpha solver."""

from __future__ import annotations

import re

import pytest
import torch

from balanced_l1.detection import (
    BoxLossConfig,
    GradientBalanceMonitor,
    build_small_faster_rcnn,
    predict_box_gradient_balance,
    solve_alpha,
)
from balanced_l1.detection.balance_prediction import TORCHVISION_ROI_BOX_LOSS, roi_box_loss, split_roi_sample
from balanced_l1.experiments.arms import get_arm


def _images_and_targets() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 96, generator=generator, dtype=torch.float64) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 30.0, 90.0, 70.0]], dtype=torch.float64),
         "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]], dtype=torch.float64), "labels": torch.tensor([2])},
    ]  # fmt: skip
    return images, targets


@pytest.mark.parametrize("arm", ["smooth_l1", "balanced_l1", "smooth_l1_beta1", "giou"])
def test_the_prediction_on_a_steps_positives_equals_what_the_monitor_measured_in_that_step(arm: str) -> None:
    torch.manual_seed(0)
    model = build_small_faster_rcnn(3)
    get_arm(arm).apply(model, {})
    model.double().train()
    monitor = GradientBalanceMonitor(model)
    monitor.keep_roi_pairs = True
    images, targets = _images_and_targets()
    for _ in range(2):  # a second step, once the head has moved off its initial weights
        losses = model(images, targets)
        model.zero_grad()
        sum(losses.values()).backward()
        measured = monitor.step()["roi_heads"]
        pairs = monitor.roi_pairs
        assert pairs is not None and pairs.shape[1] == 12
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
    pred, target, proposals = split_roi_sample(pairs)
    predicted = predict_box_gradient_balance(pred, target, roi_box_loss(model), proposals=proposals)
    for name in ("inlier_fraction", "inlier_outlier_gradient_ratio", "inlier_gradient_share"):
        assert (measured[name] is None) == (predicted[name] is None), name
        if measured[name] is not None:
            assert predicted[name] == pytest.approx(measured[name], rel=1e-9, abs=1e-12), name
    monitor.remove()


def test_torchvisions_own_head_is_predicted_as_smooth_l1_with_beta_one_ninth() -> None:
    model = build_small_faster_rcnn(3)
    assert roi_box_loss(model) == TORCHVISION_ROI_BOX_LOSS
    get_arm("balanced_l1").apply(model, {"alpha": 0.3})
    assert roi_box_loss(model).values["alpha"] == 0.3


def _errors() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(2000, 4, generator=generator, dtype=torch.float64) * 0.8
    return pred, torch.zeros_like(pred)


@pytest.mark.parametrize("target_ratio", [0.7, 0.88, 0.95])
@pytest.mark.parametrize("gamma", [1.0, 1.5])
def test_the_solved_alpha_reproduces_the_target_ratio(target_ratio: float, gamma: float) -> None:
    pred, target = _errors()
    alpha = solve_alpha(pred, target, target_ratio, gamma=gamma)
    assert alpha is not None
    config = BoxLossConfig("balanced_l1", {"alpha": alpha, "gamma": gamma})
    ratio = predict_box_gradient_balance(pred, target, config)["inlier_outlier_gradient_ratio"]
    assert ratio == pytest.approx(target_ratio, rel=1e-9)


def test_an_unreachable_ratio_gives_none_and_a_bad_one_is_refused() -> None:
    pred, target = _errors()
    assert solve_alpha(pred, target, 1e6) is None
    # as alpha grows, Balanced L1 tends to smooth L1 with beta 1 (ratio 0.64 on these errors): 0.3 is below reach
    assert solve_alpha(pred, target, 0.3) is None
    with pytest.raises(ValueError, match="target_ratio must be finite and > 0"):
        solve_alpha(pred, target, float("nan"))


def test_the_mean_box_gradient_includes_the_loss_weight() -> None:
    pred, target = _errors()
    one = predict_box_gradient_balance(pred, target, BoxLossConfig("l1"))
    two = predict_box_gradient_balance(pred, target, BoxLossConfig("l1", loss_weight=2.0))
    assert one["mean_box_gradient"] == pytest.approx(4.0) and two["mean_box_gradient"] == pytest.approx(8.0)
    assert one["inlier_outlier_gradient_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("sample", "message"),
    [(torch.zeros(3, 8), "must be \\(P, 12\\)"), (torch.full((2, 12), float("nan")), "finite numbers only")],
)
def test_a_malformed_sample_is_refused(sample: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_roi_sample(sample)


def test_an_iou_loss_without_proposals_is_refused() -> None:
    pred, target = _errors()
    with pytest.raises(ValueError, match="give \\(P, 4\\) proposals"):
        predict_box_gradient_balance(pred, target, BoxLossConfig("giou"))


def test_the_balanced_l1_arm_leaves_the_rpn_loss_bit_identical_to_the_baselines() -> None:
    images, targets = _images_and_targets()
    images = [i.float() for i in images]
    targets = [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets]
    results = {}
    for arm in ("smooth_l1", "balanced_l1"):
        torch.manual_seed(0)
        model = build_small_faster_rcnn(3)
        get_arm(arm).apply(model, {})
        model.train()
        torch.manual_seed(1)
        losses = model(images, targets)
        sum(losses.values()).backward()
        rpn_grad = model.rpn.head.bbox_pred.weight.grad.clone()
        results[arm] = (losses, rpn_grad)
    base, ours = results["smooth_l1"], results["balanced_l1"]
    for name in ("loss_objectness", "loss_rpn_box_reg"):
        assert torch.equal(base[0][name], ours[0][name]), name
    assert not torch.equal(base[0]["loss_box_reg"], ours[0]["loss_box_reg"])


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        (
            "pred",
            torch.zeros(2, 4, dtype=torch.complex128),
            "pred must be a real floating tensor, got dtype torch.complex128",
        ),
        (
            "target",
            torch.zeros(2, 4, dtype=torch.complex64),
            "target must be a real floating tensor, got dtype torch.complex64",
        ),
        ("pred", [[0.0] * 4] * 2, "pred must be a torch.Tensor, got list"),
        (
            "target",
            torch.zeros(2, 4, dtype=torch.int64),
            "target must be a real floating tensor, got dtype torch.int64",
        ),
        ("proposals", [[0.0, 0.0, 1.0, 1.0]] * 2, "proposals must be a torch.Tensor, got list"),
        ("config", "giou", "config must be a BoxLossConfig, got str"),
    ],
)
def test_a_prediction_refuses_what_is_not_a_real_tensor_naming_the_argument(
    argument: str, value: object, message: str
) -> None:
    arguments: dict[str, object] = {"pred": torch.zeros(2, 4), "target": torch.zeros(2, 4), "config": BoxLossConfig()}
    with pytest.raises(TypeError, match=re.escape(message)):
        predict_box_gradient_balance(**{**arguments, argument: value})  # type: ignore[arg-type]


def test_a_prediction_refuses_a_loss_float64_cannot_compute() -> None:
    pred, target = _errors()
    with pytest.raises(ValueError, match=r"alpha \* beta / b = 0 cannot be represented in float64"):
        predict_box_gradient_balance(pred, target, BoxLossConfig("balanced_l1", {"beta": 5e-324}))


def test_the_solver_searches_only_the_alphas_float64_can_compute() -> None:
    """With beta 1e-295 every error is an outlier (ratio 1 at every alpha), and below alpha ~0.0245 the constant
    alpha * beta / b underflows float64: those alphas are left out of the search instead of failing it."""
    pred, target = _errors()
    assert solve_alpha(pred, target, 0.9, beta=1e-295) is None
    alpha = solve_alpha(pred, target, 1.0, beta=1e-295)  # the first alpha searched reaches it
    assert alpha is not None and 1.5 / 80 < 0.0245 < alpha < 0.03
