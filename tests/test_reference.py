"""The NumPy float64 reference reproduces docs/contract.md's "4. Conformance values" and the laws of "1. The loss"."""

import math

import numpy as np
import pytest

from balanced_l1.params import BalancedL1Params
from balanced_l1.reference import balanced_l1, balanced_l1_grad, smooth_l1, smooth_l1_grad
from tests.conformance import conformance_cases


@pytest.mark.parametrize(("beta", "formulation", "x", "value", "grad"), conformance_cases())
def test_reference_reproduces_conformance_table(beta, formulation, x, value, grad):
    params = BalancedL1Params(beta=beta, formulation=formulation)
    assert balanced_l1(x, params) == pytest.approx(value, rel=1e-12)
    assert balanced_l1_grad(x, params) == pytest.approx(grad, rel=1e-12)


def test_default_constants_match_the_paper():
    params = BalancedL1Params()
    assert params.b == pytest.approx(math.e**3 - 1, rel=1e-15)
    assert params.C == pytest.approx(-0.42141, abs=1e-5)
    assert params.alpha * math.log(params.b + 1) == pytest.approx(params.gamma, rel=1e-15)


@pytest.mark.parametrize("formulation", ["scaled", "mmdet"])
def test_reference_gradient_matches_finite_differences(formulation):
    params = BalancedL1Params(beta=0.7, formulation=formulation)
    x = np.array([-2.0, -0.69, -0.3, 0.01, 0.2, 0.5, 0.71, 3.0])
    h = 1e-6
    numeric = (balanced_l1(x + h, params) - balanced_l1(x - h, params)) / (2 * h)
    np.testing.assert_allclose(balanced_l1_grad(x, params), numeric, rtol=1e-6, atol=1e-8)


def test_mmdet_gradient_starts_at_alpha_one_minus_beta_over_beta():
    params = BalancedL1Params(beta=0.11, formulation="mmdet")
    assert balanced_l1_grad(1e-12, params) == pytest.approx(0.5 * (1 - 0.11) / 0.11, rel=1e-9)


def test_smooth_l1_reference_is_huber_over_beta():
    x = np.array([-2.0, -0.5, 0.0, 0.25, 3.0])
    np.testing.assert_allclose(smooth_l1(x), [1.5, 0.125, 0.0, 0.03125, 2.5])
    np.testing.assert_allclose(smooth_l1_grad(x), [-1.0, -0.5, 0.0, 0.25, 1.0])
