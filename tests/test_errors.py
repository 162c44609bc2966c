"""Every bad input of docs/contract.md ("3. The PyTorch API") gets a clear error naming the argument and the value."""

import math

import pytest
import torch

from balanced_l1 import BalancedL1Loss, BalancedL1Params, balanced_l1_loss

X = torch.zeros(2, 4)


@pytest.mark.parametrize("name", ["alpha", "gamma", "beta"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_non_positive_or_non_finite_parameters_raise_value_error(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be finite and > 0, got {value!r}"):
        balanced_l1_loss(X, X, **{name: value})
    with pytest.raises(ValueError, match=rf"{name} must be finite and > 0"):
        BalancedL1Loss(**{name: value})


def test_non_numeric_parameter_raises_type_error():
    with pytest.raises(TypeError, match=r"beta must be a real number, got '1' of type str"):
        balanced_l1_loss(X, X, beta="1")


def test_too_large_gamma_over_alpha_raises_value_error():
    with pytest.raises(ValueError, match=r"gamma / alpha must be at most 80 .*ratio 100"):
        BalancedL1Params(alpha=0.05, gamma=5.0)


@pytest.mark.parametrize("reduction", ["avg", "", None, "MEAN"])
def test_unknown_reduction_lists_the_valid_ones(reduction):
    with pytest.raises(ValueError, match=r"reduction must be one of none, mean, sum, got"):
        balanced_l1_loss(X, X, reduction=reduction)
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        BalancedL1Loss(reduction=reduction)


def test_unknown_reduction_override_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"reduction must be one of none, mean, sum, got 'avg'"):
        BalancedL1Loss()(X, X, reduction_override="avg")


def test_unknown_formulation_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"formulation must be one of scaled, mmdet, got 'paper'"):
        balanced_l1_loss(X, X, formulation="paper")


def test_different_shapes_raise_value_error_with_both_shapes():
    with pytest.raises(ValueError, match=r"same shape, got pred \(2, 4\) and target \(1, 4\)"):
        balanced_l1_loss(X, torch.zeros(1, 4))


def test_integer_tensor_raises_type_error():
    with pytest.raises(TypeError, match=r"target must be a floating tensor .* got torch.int64"):
        balanced_l1_loss(X, torch.zeros(2, 4, dtype=torch.long))


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match=r"pred must be a torch.Tensor, got list"):
        balanced_l1_loss([0.0], X)


def test_weight_that_does_not_broadcast_raises_value_error():
    with pytest.raises(ValueError, match=r"weight of shape \(3,\) is not broadcastable to pred's shape \(2, 4\)"):
        balanced_l1_loss(X, X, weight=torch.ones(3))


def test_weight_that_would_grow_the_output_raises_value_error():
    with pytest.raises(ValueError, match=r"weight of shape \(3, 2, 4\) is not broadcastable"):
        balanced_l1_loss(X, X, weight=torch.ones(3, 2, 4))


@pytest.mark.parametrize("avg_factor", [-1.0, math.inf, math.nan])
def test_bad_python_avg_factor_raises_value_error(avg_factor):
    with pytest.raises(ValueError, match=r"avg_factor must be finite and >= 0"):
        balanced_l1_loss(X, X, avg_factor=avg_factor)


def test_avg_factor_with_sum_raises_value_error():
    with pytest.raises(ValueError, match=r"avg_factor can not be used with reduction='sum'"):
        balanced_l1_loss(X, X, reduction="sum", avg_factor=4)


def test_avg_factor_tensor_with_dimensions_raises_value_error():
    message = r"avg_factor must be a number or a 0-dim tensor, got a tensor of shape \(2,\)"
    with pytest.raises(ValueError, match=message):
        balanced_l1_loss(X, X, avg_factor=torch.ones(2))


def test_tiny_beta_whose_scale_overflows_float32_still_gives_finite_results():
    pred = torch.tensor([0.0, 1e-12, 1e-3, 5.0], requires_grad=True)
    loss = balanced_l1_loss(pred, torch.zeros(4), beta=1e-38, reduction="sum")
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("loss_weight", [math.nan, math.inf, -1.0, -(10**400)])
def test_bad_loss_weight_value_raises_value_error(loss_weight):
    with pytest.raises(ValueError, match=r"loss_weight must be finite and >= 0, got"):
        BalancedL1Loss(loss_weight=loss_weight)


@pytest.mark.parametrize("loss_weight", ["1.0", None, True])
def test_non_numeric_loss_weight_raises_type_error(loss_weight):
    with pytest.raises(TypeError, match=r"loss_weight must be a real number, got"):
        BalancedL1Loss(loss_weight=loss_weight)
