"""The boundary rules of the PyTorch loss hold in JAX and Keras 3 too (shared balanced_l1.params)."""

from __future__ import annotations

import numpy as np
import pytest

from balanced_l1 import reference
from balanced_l1.params import BalancedL1Params

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
keras = pytest.importorskip("keras")

from balanced_l1 import keras as bl1_keras  # noqa: E402
from balanced_l1.jax import balanced_l1_loss as jax_loss  # noqa: E402


def test_jax_beta_beyond_float32_raises_a_clear_value_error():
    with pytest.raises(ValueError, match=r"beta = 1e\+300 cannot be represented in float32"):
        jax_loss(jnp.array([0.5]), jnp.zeros(1), beta=1e300)


def test_jax_mmdet_gradient_beyond_float16_raises():
    with pytest.raises(ValueError, match=r"gradient of the loss reaches 500000 .* float16's largest finite value"):
        jax_loss(jnp.ones(1, jnp.float16), jnp.zeros(1, jnp.float16), beta=1e-6, formulation="mmdet")


def test_jax_float32_input_just_below_beta_is_an_inlier():
    x32 = np.float32(0.11)
    grad = jax.grad(lambda p: jax_loss(p, jnp.zeros(1), beta=0.11, formulation="mmdet", reduction="sum"))(
        jnp.array([x32])
    )
    expected = reference.balanced_l1_grad(float(x32), BalancedL1Params(beta=0.11, formulation="mmdet"))
    assert float(grad[0]) == pytest.approx(expected, rel=1e-6) and expected == pytest.approx(1.7014, abs=1e-4)


@pytest.mark.parametrize("avg_factor", [np.int64(-3), 10**400])
def test_jax_bad_host_avg_factor_raises_value_error(avg_factor):
    with pytest.raises(ValueError, match=r"avg_factor must be finite and >= 0"):
        jax_loss(jnp.zeros(2), jnp.zeros(2), avg_factor=avg_factor)


def test_jax_avg_factor_is_ignored_with_reduction_none_and_numpy_beta_is_accepted():
    x = jnp.array([0.05, 0.5, -3.0])
    np.testing.assert_array_equal(
        np.asarray(jax_loss(x, 0 * x, reduction="none", avg_factor=-5, beta=np.float32(0.5))),
        np.asarray(jax_loss(x, 0 * x, reduction="none", beta=0.5)),
    )


def test_keras_beta_beyond_float32_raises_a_clear_value_error():
    with pytest.raises(ValueError, match=r"beta = 1e\+300 cannot be represented in float32"):
        bl1_keras.balanced_l1_loss(np.zeros((1, 1)), np.full((1, 1), 0.5, np.float32), beta=1e300)


def test_keras_mmdet_gradient_beyond_float16_raises():
    with pytest.raises(ValueError, match=r"gradient of the loss reaches 500000 .* float16's largest finite value"):
        bl1_keras.balanced_l1_loss(np.zeros((1, 1)), np.ones((1, 1), np.float16), beta=1e-6, formulation="mmdet")


def test_keras_loss_of_a_float32_input_just_below_beta_matches_the_reference():
    x32 = np.float32(0.11)
    loss = bl1_keras.balanced_l1_loss(np.zeros((1, 1)), np.array([[x32]]), beta=0.11, formulation="mmdet")
    expected = reference.balanced_l1(float(x32), BalancedL1Params(beta=0.11, formulation="mmdet"))
    assert float(np.asarray(keras.ops.convert_to_numpy(loss))[0]) == pytest.approx(float(expected), rel=1e-6)
