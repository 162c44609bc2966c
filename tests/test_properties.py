"""Laws of the Balanced L1 loss, checked with hypothesis over random parameters and inputs."""

import math

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from balanced_l1 import BalancedL1Params, balanced_l1_loss
from balanced_l1.params import MAX_GAMMA_OVER_ALPHA
from balanced_l1.reference import balanced_l1, balanced_l1_grad

alphas = st.floats(0.05, 2.0)
gammas = st.floats(0.1, 5.0)
betas = st.floats(0.01, 5.0)
formulations = st.sampled_from(["scaled", "mmdet"])
magnitudes = st.floats(0.0, 50.0, allow_subnormal=False)


def _torch(x: np.ndarray | float, params: BalancedL1Params, dtype: torch.dtype = torch.float64):
    pred = torch.as_tensor(np.atleast_1d(np.asarray(x, dtype=np.float64)), dtype=dtype).requires_grad_(True)
    loss = balanced_l1_loss(
        pred,
        torch.zeros_like(pred),
        alpha=params.alpha,
        gamma=params.gamma,
        beta=params.beta,
        formulation=params.formulation,
        reduction="none",
    )
    loss.sum().backward()
    return loss.detach().double().numpy(), pred.grad.double().numpy()


def _params(alpha: float, gamma: float, beta: float, formulation: str = "scaled") -> BalancedL1Params:
    assume(gamma / alpha <= MAX_GAMMA_OVER_ALPHA)
    return BalancedL1Params(alpha=alpha, gamma=gamma, beta=beta, formulation=formulation)


@settings(max_examples=60, deadline=None)
@given(alphas, gammas, betas, formulations, st.lists(st.floats(-20, 20), min_size=1, max_size=16))
def test_agrees_with_reference(alpha, gamma, beta, formulation, xs):
    params = _params(alpha, gamma, beta, formulation)
    x = np.array(xs)
    value, grad = _torch(x, params)
    np.testing.assert_allclose(value, balanced_l1(x, params), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, balanced_l1_grad(x, params), rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(alphas, gammas, betas, formulations, magnitudes)
def test_symmetric_in_x(alpha, gamma, beta, formulation, a):
    params = _params(alpha, gamma, beta, formulation)
    (value_pos,), (grad_pos,) = _torch(a, params)
    (value_neg,), (grad_neg,) = _torch(-a, params)
    assert value_pos == value_neg
    assert grad_pos == -grad_neg


@settings(max_examples=40, deadline=None)
@given(alphas, gammas, betas, formulations)
def test_loss_and_gradient_are_zero_at_zero(alpha, gamma, beta, formulation):
    (value,), (grad,) = _torch(0.0, _params(alpha, gamma, beta, formulation))
    assert value == 0.0 and grad == 0.0


@settings(max_examples=60, deadline=None)
@given(alphas, gammas, betas, st.lists(magnitudes, min_size=2, max_size=32))
def test_scaled_loss_is_monotonic_in_abs_x(alpha, gamma, beta, values):
    a = np.sort(np.array(values))
    loss, _ = _torch(a, _params(alpha, gamma, beta))
    assert np.all(np.diff(loss) >= 0)


@settings(max_examples=60, deadline=None)
@given(alphas, gammas, betas)
def test_scaled_value_and_gradient_are_continuous_at_beta(alpha, gamma, beta):
    params = _params(alpha, gamma, beta)
    below, above = np.nextafter(beta, 0.0), beta
    (v_below, v_above), (g_below, g_above) = _torch(np.array([below, above]), params)
    assert math.isclose(v_below, v_above, rel_tol=1e-12, abs_tol=1e-14)
    assert math.isclose(g_below, g_above, rel_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(alphas, gammas, betas, st.lists(st.floats(-100, 100), min_size=1, max_size=32))
def test_scaled_gradient_never_exceeds_gamma(alpha, gamma, beta, xs):
    _, grad = _torch(np.array(xs), _params(alpha, gamma, beta), dtype=torch.float32)
    assert np.all(np.abs(grad) <= np.float32(gamma) * (1 + 1e-6))


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-3, 0.999))
def test_inlier_gradient_is_above_smooth_l1_at_beta_one(a):
    (_,), (grad,) = _torch(a, BalancedL1Params())
    smooth_l1_grad = torch.func.grad(lambda p: torch.nn.functional.smooth_l1_loss(p, torch.zeros(())))(
        torch.tensor(a, dtype=torch.float64)
    )
    assert grad > smooth_l1_grad.item()


@settings(max_examples=40, deadline=None)
@given(alphas, gammas, betas, formulations, st.lists(st.floats(-60000, 60000), min_size=1, max_size=16))
def test_finite_half_inputs_give_finite_loss_and_gradient(alpha, gamma, beta, formulation, xs):
    params = _params(alpha, gamma, beta, formulation)
    for dtype in (torch.float16, torch.bfloat16):
        value, grad = _torch(np.array(xs), params, dtype=dtype)
        assert np.isfinite(value).all() and np.isfinite(grad).all()
