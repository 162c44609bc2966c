"""balanced_l1_loss against docs/contract.md, "3. The PyTorch API": values, reductions, weights, dtypes, edge cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from balanced_l1 import BalancedL1Params, balanced_l1_loss
from balanced_l1.params import AVG_FACTOR_EPS
from balanced_l1.reference import balanced_l1, balanced_l1_grad
from tests.conformance import DEVICES, conformance_cases

FORMULATIONS = ["scaled", "mmdet"]


def _loss_and_grad(x: float, dtype: torch.dtype, device: str = "cpu", **kwargs):
    pred = torch.tensor([x], dtype=dtype, device=device, requires_grad=True)
    loss = balanced_l1_loss(pred, torch.zeros(1, dtype=dtype, device=device), reduction="sum", **kwargs)
    loss.backward()
    return loss.item(), pred.grad.item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("beta", "formulation", "x", "value", "grad"), conformance_cases())
def test_conformance_table_in_float64(beta, formulation, x, value, grad, device):
    got_value, got_grad = _loss_and_grad(x, torch.float64, device, beta=beta, formulation=formulation)
    assert got_value == pytest.approx(value, rel=1e-12)
    assert got_grad == pytest.approx(grad, rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("beta", "formulation", "x", "value", "grad"), conformance_cases())
def test_conformance_table_in_float32(beta, formulation, x, value, grad, device):
    got_value, got_grad = _loss_and_grad(x, torch.float32, device, beta=beta, formulation=formulation)
    assert got_value == pytest.approx(value, rel=1e-6)
    assert got_grad == pytest.approx(grad, rel=1e-6)


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("beta", [0.05, 0.11, 1.0, 2.5])
def test_matches_reference_on_a_grid(formulation, beta):
    x = torch.linspace(-4 * beta, 4 * beta, 801, dtype=torch.float64, requires_grad=True)
    loss = balanced_l1_loss(x, torch.zeros_like(x), beta=beta, formulation=formulation, reduction="none")
    loss.sum().backward()
    params = BalancedL1Params(beta=beta, formulation=formulation)
    np.testing.assert_allclose(loss.detach().numpy(), balanced_l1(x.detach().numpy(), params), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(x.grad.numpy(), balanced_l1_grad(x.detach().numpy(), params), rtol=1e-12, atol=1e-15)


def test_loss_depends_on_the_difference_only():
    pred = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    target = torch.tensor([0.5, 2.5, 1.0], dtype=torch.float64)
    shifted = balanced_l1_loss(pred + 7.0, target + 7.0, reduction="none")
    torch.testing.assert_close(balanced_l1_loss(pred, target, reduction="none"), shifted)


def test_gradient_of_target_is_minus_gradient_of_pred():
    pred = torch.randn(10, dtype=torch.float64, requires_grad=True)
    target = torch.randn(10, dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(pred, target, reduction="sum").backward()
    torch.testing.assert_close(target.grad, -pred.grad)


def test_reduction_none_keeps_the_shape():
    pred = torch.randn(2, 3, 4)
    assert balanced_l1_loss(pred, torch.zeros_like(pred), reduction="none").shape == (2, 3, 4)


def test_mean_is_sum_over_number_of_elements():
    pred, target = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    total = balanced_l1_loss(pred, target, reduction="sum")
    torch.testing.assert_close(balanced_l1_loss(pred, target), total / 20)


def test_weight_multiplies_the_elementwise_loss_before_reduction():
    pred, target = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    weight = torch.rand(6, 1, dtype=torch.float64)
    elementwise = balanced_l1_loss(pred, target, reduction="none")
    torch.testing.assert_close(balanced_l1_loss(pred, target, weight=weight, reduction="none"), elementwise * weight)
    torch.testing.assert_close(balanced_l1_loss(pred, target, weight=weight), (elementwise * weight).mean())


def test_avg_factor_divides_the_weighted_sum_plus_eps():
    pred, target = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    weight = (torch.rand(8, 4) > 0.5).double()
    total = balanced_l1_loss(pred, target, weight=weight, reduction="sum")
    got = balanced_l1_loss(pred, target, weight=weight, avg_factor=3, reduction="mean")
    torch.testing.assert_close(got, total / (3 + AVG_FACTOR_EPS))
    assert AVG_FACTOR_EPS == torch.finfo(torch.float32).eps


def test_avg_factor_tensor_is_used_on_its_device_value():
    pred, target = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    total = balanced_l1_loss(pred, target, reduction="sum")
    got = balanced_l1_loss(pred, target, avg_factor=torch.tensor(5.0, dtype=torch.float64))
    torch.testing.assert_close(got, total / (5.0 + AVG_FACTOR_EPS))


def test_avg_factor_is_ignored_with_reduction_none():
    pred, target = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(
        balanced_l1_loss(pred, target, reduction="none", avg_factor=10.0),
        balanced_l1_loss(pred, target, reduction="none"),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_gives_a_zero_that_backpropagates(reduction):
    pred = torch.empty(0, 4, requires_grad=True)
    loss = balanced_l1_loss(pred, torch.empty(0, 4), reduction=reduction)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4)


def test_empty_input_with_reduction_none_is_empty():
    assert balanced_l1_loss(torch.empty(0, 4), torch.empty(0, 4), reduction="none").shape == (0, 4)


def test_empty_input_with_avg_factor_is_zero():
    assert balanced_l1_loss(torch.empty(0, 4), torch.empty(0, 4), avg_factor=0.0).item() == 0.0


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_nan_propagates_like_smooth_l1(formulation):
    pred = torch.tensor([float("nan"), 0.3, float("inf")])
    loss = balanced_l1_loss(pred, torch.zeros(3), reduction="none", formulation=formulation)
    expected = F.smooth_l1_loss(pred, torch.zeros(3), reduction="none")
    assert math.isnan(loss[0].item()) and math.isnan(expected[0].item())
    assert math.isfinite(loss[1].item())
    assert loss[2].item() == math.inf == expected[2].item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_up_to_65504_give_finite_float32_loss_and_half_gradient(dtype, formulation, device):
    values = [0.0, 1e-4, 0.05, 0.11, 0.5, 1.0, 3.0, 100.0, 6e4, 65504.0]
    pred = torch.tensor(values + [-v for v in values], dtype=dtype, device=device, requires_grad=True)
    target = torch.zeros_like(pred)
    loss = balanced_l1_loss(pred, target, beta=0.11, reduction="none", formulation=formulation)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert pred.grad.dtype == dtype
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_extreme_differences_stay_finite(dtype, device):
    pred = torch.tensor([65504.0, -65504.0], dtype=dtype, device=device)
    target = torch.tensor([-65504.0, 65504.0], dtype=dtype, device=device)
    pred.requires_grad_(True)
    loss = balanced_l1_loss(pred, target, reduction="sum")
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(pred.grad).all()


def test_half_loss_equals_float32_loss_of_the_same_values():
    pred = torch.randn(100).to(torch.bfloat16)
    target = torch.randn(100).to(torch.bfloat16)
    torch.testing.assert_close(balanced_l1_loss(pred, target), balanced_l1_loss(pred.float(), target.float()))


def test_float64_stays_float64():
    pred = torch.randn(3, dtype=torch.float64)
    assert balanced_l1_loss(pred, torch.zeros_like(pred)).dtype == torch.float64


def test_cpu_autocast_bfloat16_gives_a_float32_loss():
    layer = torch.nn.Linear(8, 4)
    x, target = torch.randn(16, 8), torch.randn(16, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = layer(x)
        assert pred.dtype == torch.bfloat16
        loss = balanced_l1_loss(pred, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_non_contiguous_inputs_match_contiguous():
    base = torch.randn(8, 6, dtype=torch.float64)
    pred, target = base.t(), torch.randn(6, 8, dtype=torch.float64)
    torch.testing.assert_close(
        balanced_l1_loss(pred, target, reduction="none"), balanced_l1_loss(pred.contiguous(), target, reduction="none")
    )


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_beta_one_formulations_agree(formulation):
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    torch.testing.assert_close(
        balanced_l1_loss(x, torch.zeros_like(x), reduction="none", formulation=formulation),
        balanced_l1_loss(x, torch.zeros_like(x), reduction="none", formulation="scaled"),
    )
