"""balanced_l1.jax: the contract of docs/contract.md ("3. The PyTorch API") in JAX, against the float64 reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from balanced_l1 import reference
from balanced_l1.jax import balanced_l1_loss
from balanced_l1.params import AVG_FACTOR_EPS, BalancedL1Params
from tests.conformance import conformance_cases

CONFORMANCE = conformance_cases()  # docs/contract.md "4. Conformance values": (beta, formulation, x, L, dL/dx)
CASES = [(beta, formulation) for beta in (0.11, 1.0, 2.5) for formulation in ("scaled", "mmdet")]


@pytest.fixture
def x64() -> Iterator[None]:
    """Enable float64 in JAX for one test only."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _grid(beta: float) -> np.ndarray:
    """x from -4 beta to 4 beta, with 0 and both kinks +-beta exactly."""
    return np.concatenate([np.linspace(-4.0, 4.0, 401) * beta, [0.0, beta, -beta, 1e-3 * beta]])


def _loss_and_grad(x: jax.Array, **kwargs: Any) -> tuple[jax.Array, jax.Array]:
    """Element-wise loss of ``x = pred - 0`` and its derivative with respect to ``pred``."""

    def total(pred: jax.Array) -> jax.Array:
        return balanced_l1_loss(pred, jnp.zeros_like(pred), reduction="sum", **kwargs)

    loss = balanced_l1_loss(x, jnp.zeros_like(x), reduction="none", **kwargs)
    return loss, jax.grad(total)(x)


@pytest.mark.parametrize(("beta", "formulation", "x", "loss", "grad"), CONFORMANCE)
def test_conformance_table_in_float64_to_1e_12(
    x64: None, beta: float, formulation: str, x: float, loss: float, grad: float
) -> None:
    got_loss, got_grad = _loss_and_grad(jnp.array([x], dtype=jnp.float64), beta=beta, formulation=formulation)
    assert got_loss.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got_loss), [loss], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got_grad), [grad], rtol=1e-12)


@pytest.mark.parametrize(("beta", "formulation", "x", "loss", "grad"), CONFORMANCE)
def test_conformance_table_in_float32_to_1e_6(
    beta: float, formulation: str, x: float, loss: float, grad: float
) -> None:
    got_loss, got_grad = _loss_and_grad(jnp.array([x], dtype=jnp.float32), beta=beta, formulation=formulation)
    assert got_loss.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got_loss), [loss], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got_grad), [grad], rtol=1e-6)


@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_values_and_gradients_match_the_reference_in_float64(x64: None, beta: float, formulation: str) -> None:
    params = BalancedL1Params(beta=beta, formulation=formulation)
    x = _grid(beta)
    loss, grad = _loss_and_grad(jnp.asarray(x, dtype=jnp.float64), beta=beta, formulation=formulation)
    np.testing.assert_allclose(np.asarray(loss), reference.balanced_l1(x, params), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(grad), reference.balanced_l1_grad(x, params), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_values_and_gradients_match_the_reference_in_float32(beta: float, formulation: str) -> None:
    # the side of mmdet's gradient jump is decided against beta itself, not float32(beta): float32(0.11) < 0.11
    params = BalancedL1Params(beta=beta, formulation=formulation)
    x = _grid(beta).astype(np.float32)
    loss, grad = _loss_and_grad(jnp.asarray(x), beta=beta, formulation=formulation)
    np.testing.assert_allclose(np.asarray(loss), reference.balanced_l1(x, params), rtol=1e-5, atol=1e-6 * beta)
    np.testing.assert_allclose(np.asarray(grad), reference.balanced_l1_grad(x, params), rtol=1e-5, atol=1e-6)


def test_gradient_with_respect_to_target_is_minus_the_gradient_with_respect_to_pred() -> None:
    pred, target = jnp.array([0.3, -2.0, 0.7]), jnp.array([0.1, 0.5, 0.7])
    grad_pred, grad_target = jax.grad(balanced_l1_loss, argnums=(0, 1))(pred, target)
    np.testing.assert_array_equal(np.asarray(grad_target), -np.asarray(grad_pred))


def test_reductions_are_none_mean_and_sum_of_the_elementwise_loss() -> None:
    pred = np.array([[0.05, -0.5], [3.0, 0.7]], dtype=np.float32)
    target = np.array([[0.1, 0.2], [0.0, 0.7]], dtype=np.float32)
    expected = reference.balanced_l1(pred.astype(np.float64) - target)
    np.testing.assert_allclose(np.asarray(balanced_l1_loss(pred, target, reduction="none")), expected, rtol=1e-6)
    np.testing.assert_allclose(float(balanced_l1_loss(pred, target)), expected.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(balanced_l1_loss(pred, target, reduction="sum")), expected.sum(), rtol=1e-6)


def test_weight_broadcasts_to_pred_and_multiplies_the_elementwise_loss() -> None:
    x = np.array([[0.05, -0.5, 2.0], [3.0, 0.2, -1.0]])
    weight = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    got = balanced_l1_loss(jnp.asarray(x, jnp.float32), jnp.zeros((2, 3)), weight=jnp.asarray(weight), reduction="sum")
    np.testing.assert_allclose(float(got), (reference.balanced_l1(x) * weight).sum(), rtol=1e-6)


@pytest.mark.parametrize("avg_factor", [7.0, 7, np.float32(7.0), jnp.array(7.0)], ids=["float", "int", "np", "jnp"])
def test_mean_with_avg_factor_divides_the_sum_by_avg_factor_plus_eps(avg_factor: Any) -> None:
    x = np.array([0.05, -0.5, 3.0, 0.2])
    got = balanced_l1_loss(jnp.asarray(x, jnp.float32), jnp.zeros(4), avg_factor=avg_factor)
    np.testing.assert_allclose(float(got), reference.balanced_l1(x).sum() / (7.0 + AVG_FACTOR_EPS), rtol=1e-6)


def test_avg_factor_is_ignored_with_reduction_none() -> None:
    pred, target = jnp.array([0.5, -3.0]), jnp.zeros(2)
    got = balanced_l1_loss(pred, target, reduction="none", avg_factor=10.0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(balanced_l1_loss(pred, target, reduction="none")))


def test_jit_with_static_parameters_and_a_traced_avg_factor_matches_eager() -> None:
    loss = jax.jit(balanced_l1_loss, static_argnames=("alpha", "gamma", "beta", "reduction", "formulation"))
    pred, target = jnp.array([0.05, 0.5, -3.0]), jnp.array([0.0, 0.1, 0.0])
    kwargs: dict[str, Any] = {"beta": 0.11, "formulation": "mmdet", "avg_factor": jnp.array(2.0)}
    np.testing.assert_allclose(
        np.asarray(loss(pred, target, **kwargs)), np.asarray(balanced_l1_loss(pred, target, **kwargs)), rtol=1e-6
    )


def test_jit_of_the_gradient_matches_the_reference() -> None:
    x = np.array([0.05, 0.5, -3.0, 0.0], dtype=np.float32)
    grad = jax.jit(jax.grad(lambda p: balanced_l1_loss(p, jnp.zeros(4), reduction="sum", beta=2.5)))
    expected = reference.balanced_l1_grad(x, BalancedL1Params(beta=2.5))
    np.testing.assert_allclose(np.asarray(grad(jnp.asarray(x))), expected, rtol=1e-6)


def test_vmap_gives_one_loss_per_row() -> None:
    x = np.array([[0.05, 0.5], [-3.0, 1.0], [0.0, 0.2]])
    batched = jax.vmap(balanced_l1_loss)(jnp.asarray(x, jnp.float32), jnp.zeros((3, 2)))
    np.testing.assert_allclose(np.asarray(batched), reference.balanced_l1(x).mean(axis=1), rtol=1e-6)


def test_vmap_of_grad_gives_per_row_gradients() -> None:
    x = np.array([[0.05, 0.5], [-3.0, 1.0]])
    grads = jax.vmap(jax.grad(balanced_l1_loss))(jnp.asarray(x, jnp.float32), jnp.zeros((2, 2)))
    np.testing.assert_allclose(np.asarray(grads), reference.balanced_l1_grad(x) / 2, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_half_precision_is_computed_in_float32_and_finite_up_to_65504(
    dtype: Any, beta: float, formulation: str
) -> None:
    values = np.array([65504.0, -65504.0, 1000.0, beta, 0.01, 0.0, -1e-4], dtype=np.float32)
    pred, target = jnp.asarray(values, dtype), jnp.asarray(-values[::-1], dtype)

    def total(p: jax.Array) -> jax.Array:
        return balanced_l1_loss(p, target, beta=beta, formulation=formulation)

    loss, grad = jax.value_and_grad(total)(pred)
    in_float32 = balanced_l1_loss(
        pred.astype(jnp.float32), target.astype(jnp.float32), beta=beta, formulation=formulation
    )
    assert loss.dtype == jnp.float32
    assert grad.dtype == dtype
    assert bool(jnp.isfinite(loss)) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(in_float32))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_gives_zero_and_a_zero_gradient(reduction: str) -> None:
    pred, target = jnp.zeros((0, 4)), jnp.zeros((0, 4))
    loss, grad = jax.value_and_grad(lambda p: balanced_l1_loss(p, target, reduction=reduction))(pred)
    assert float(loss) == 0.0
    assert grad.shape == (0, 4)


def test_empty_input_with_reduction_none_gives_an_empty_array() -> None:
    assert balanced_l1_loss(jnp.zeros((0, 4)), jnp.zeros((0, 4)), reduction="none").shape == (0, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_input_propagates_to_that_element_only(bad: float) -> None:
    pred = jnp.array([bad, 0.5, -3.0])
    loss = balanced_l1_loss(pred, jnp.zeros(3), reduction="none")
    grad = jax.grad(lambda p: balanced_l1_loss(p, jnp.zeros(3), reduction="sum"))(pred)
    assert not np.isfinite(np.asarray(loss)[0])
    assert np.all(np.isfinite(np.asarray(loss)[1:])) and np.all(np.isfinite(np.asarray(grad)[1:]))


def test_nan_input_gives_nan_loss_and_nan_gradient() -> None:
    loss, grad = jax.value_and_grad(balanced_l1_loss)(jnp.array([np.nan, 0.5]), jnp.zeros(2))
    assert np.isnan(float(loss)) and np.isnan(np.asarray(grad)[0])


def test_numpy_inputs_are_accepted() -> None:
    got = balanced_l1_loss(np.array([0.5], np.float32), np.zeros(1, np.float32), reduction="sum")
    np.testing.assert_allclose(float(got), 0.4005675069053246, rtol=1e-6)


BAD_CALLS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("shapes", lambda: balanced_l1_loss(jnp.zeros(3), jnp.zeros((3, 1))), ValueError, r"same shape.*\(3,\).*\(3, 1\)"),
    ("int pred", lambda: balanced_l1_loss(jnp.zeros(3, int), jnp.zeros(3)), TypeError, "pred must be a floating array"),
    ("int target", lambda: balanced_l1_loss(jnp.zeros(3), jnp.zeros(3, int)), TypeError, "target must be a floating"),
    ("list pred", lambda: balanced_l1_loss([0.5], jnp.zeros(1)), TypeError, "pred must be a jax.Array or numpy.*list"),
    (
        "weight shape",
        lambda: balanced_l1_loss(jnp.zeros(3), jnp.zeros(3), weight=jnp.ones(2)),
        ValueError,
        r"weight of shape \(2,\) is not broadcastable to pred's shape \(3,\)",
    ),
    (
        "weight grows",
        lambda: balanced_l1_loss(jnp.zeros(3), jnp.zeros(3), weight=jnp.ones((2, 3))),
        ValueError,
        r"weight of shape \(2, 3\) is not broadcastable",
    ),
    (
        "weight list",
        lambda: balanced_l1_loss(jnp.zeros(3), jnp.zeros(3), weight=[1.0]),
        TypeError,
        "weight must be a jax.Array, numpy.ndarray or None, got list",
    ),
    (
        "alpha",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), alpha=0.0),
        ValueError,
        "alpha must be finite and > 0, got 0.0",
    ),
    (
        "gamma",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), gamma=float("inf")),
        ValueError,
        "gamma must be finite and > 0, got inf",
    ),
    (
        "beta",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), beta=-1.0),
        ValueError,
        "beta must be finite and > 0, got -1.0",
    ),
    (
        "beta type",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), beta=jnp.array(1.0)),
        TypeError,
        "beta must be a real number",
    ),
    (
        "reduction",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), reduction="avg"),
        ValueError,
        r"reduction must be one of none, mean, sum, got 'avg'",
    ),
    (
        "formulation",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), formulation="paper"),
        ValueError,
        r"formulation must be one of scaled, mmdet, got 'paper'",
    ),
    (
        "avg_factor sum",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), reduction="sum", avg_factor=2.0),
        ValueError,
        "avg_factor can not be used with reduction='sum'",
    ),
    (
        "avg_factor negative",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), avg_factor=-1.0),
        ValueError,
        "avg_factor must be finite and >= 0, got -1.0",
    ),
    (
        "avg_factor bool",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), avg_factor=True),
        TypeError,
        "avg_factor must be a real number, got True of type bool",
    ),
    (
        "avg_factor vector",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), avg_factor=jnp.ones(2)),
        ValueError,
        r"avg_factor must be a number or a 0-dim array, got an array of shape \(2,\)",
    ),
    (
        "avg_factor str",
        lambda: balanced_l1_loss(jnp.zeros(1), jnp.zeros(1), avg_factor="2"),
        TypeError,
        "avg_factor must be a number, a 0-dim array or None, got '2' of type str",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_a_clear_error(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_bad_shapes_are_rejected_at_trace_time_under_jit() -> None:
    with pytest.raises(ValueError, match="same shape"):
        jax.jit(balanced_l1_loss)(jnp.zeros(3), jnp.zeros(4))
