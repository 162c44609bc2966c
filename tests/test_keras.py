"""balanced_l1.keras on this process's Keras backend (the root conftest.py defaults it to PyTorch).

Checked against the float64 reference; tests/test_cross_framework.py runs the JAX and PyTorch backends
side by side (one of them in a subprocess), with float64 conformance and a saved-and-reloaded model on each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

from balanced_l1 import reference
from balanced_l1.keras import BalancedL1Loss, balanced_l1_loss
from balanced_l1.params import BalancedL1Params
from tests.conformance import conformance_cases

CASES = [(beta, formulation) for beta in (0.11, 1.0, 2.5) for formulation in ("scaled", "mmdet")]


def _conformance_by_parameters() -> dict[tuple[float, str], tuple[list[float], list[float], list[float]]]:
    """docs/contract.md's "4. Conformance values" grouped by (beta, formulation): x, L(x), dL/dx, one call each."""
    groups: dict[tuple[float, str], tuple[list[float], list[float], list[float]]] = {}
    for beta, formulation, x, loss, grad in conformance_cases():
        xs, losses, grads = groups.setdefault((beta, formulation), ([], [], []))
        xs.append(x)
        losses.append(loss)
        grads.append(grad)
    return groups


CONFORMANCE = _conformance_by_parameters()


def _value_and_grad(function: Callable[[Any], Any], y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """``function(y_pred)`` and the gradient of its sum with respect to ``y_pred``, with the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def total(pred: Any) -> tuple[Any, Any]:
            value = function(pred)
            return keras.ops.sum(value), value

        # one compiled program: Keras-on-JAX eagerly compiles every op for every new shape
        (_, value), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(jax.numpy.asarray(y_pred))
        return np.asarray(value), np.asarray(grad)
    if backend == "torch":
        import torch

        pred = torch.as_tensor(y_pred).detach().clone().requires_grad_(True)
        value = function(pred)
        (grad,) = torch.autograd.grad(value.sum(), pred)
        return value.detach().float().numpy(), grad.float().numpy()
    raise NotImplementedError(f"these tests take gradients on the jax and torch backends, not {backend!r}")


def _grid(beta: float) -> np.ndarray:
    """Differences from -4 beta to 4 beta with 0 and both kinks, one per row: (n, 1), float32."""
    x = np.concatenate([np.linspace(-4.0, 4.0, 61) * beta, [0.0, beta, -beta]]).astype(np.float32)
    return x[:, None]


@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_elementwise_loss_and_gradient_match_the_reference_in_float32(beta: float, formulation: str) -> None:
    x = _grid(beta)
    loss, grad = _value_and_grad(lambda p: balanced_l1_loss(np.zeros_like(x), p, beta=beta, formulation=formulation), x)
    # the side of mmdet's gradient jump is decided against beta itself, not float32(beta): float32(0.11) < 0.11
    params = BalancedL1Params(beta=beta, formulation=formulation)
    np.testing.assert_allclose(loss, reference.balanced_l1(x[:, 0], params), rtol=1e-5, atol=1e-6 * beta)
    np.testing.assert_allclose(grad[:, 0], reference.balanced_l1_grad(x[:, 0], params), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("beta", "formulation"), list(CONFORMANCE))
def test_conformance_table_in_float32_to_1e_6(beta: float, formulation: str) -> None:
    xs, losses, grads = CONFORMANCE[beta, formulation]
    x = np.array(xs, dtype=np.float32)[:, None]
    loss, grad = _value_and_grad(lambda p: balanced_l1_loss(np.zeros_like(x), p, beta=beta, formulation=formulation), x)
    np.testing.assert_allclose(loss, losses, rtol=1e-6)
    np.testing.assert_allclose(grad[:, 0], grads, rtol=1e-6)


def test_function_returns_the_mean_over_the_last_axis() -> None:
    y_true = np.zeros((3, 2, 4), dtype=np.float32)
    y_pred = np.linspace(-3.0, 3.0, 24, dtype=np.float32).reshape(3, 2, 4)
    loss = np.asarray(balanced_l1_loss(y_true, y_pred, beta=0.11))
    expected = reference.balanced_l1(y_pred, BalancedL1Params(beta=0.11)).mean(axis=-1)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_function_casts_an_integer_y_true_like_keras_losses() -> None:
    y_pred = np.array([[0.5, 2.0]], dtype=np.float32)
    got = balanced_l1_loss(np.array([[0, 1]]), y_pred)
    np.testing.assert_allclose(np.asarray(got), reference.balanced_l1([0.5, 1.0]).mean(keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("beta", "formulation"), [(0.11, "mmdet"), (1.0, "scaled"), (2.5, "mmdet")])
def test_half_precision_is_computed_in_float32_and_finite_up_to_65504(
    dtype: str, beta: float, formulation: str
) -> None:
    values = np.array([[65504.0, -65504.0, 1000.0, beta, 0.01, 0.0, -1e-4]], dtype=np.float32)
    y_pred = keras.ops.cast(values, dtype)
    y_true = keras.ops.cast(-values[:, ::-1], dtype)
    loss = balanced_l1_loss(y_true, y_pred, beta=beta, formulation=formulation)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    in_float32 = keras.ops.cast(y_true, "float32"), keras.ops.cast(y_pred, "float32")
    expected = balanced_l1_loss(*in_float32, beta=beta, formulation=formulation)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(expected))
    _, grad = _value_and_grad(lambda p: balanced_l1_loss(y_true, p, beta=beta, formulation=formulation), y_pred)
    assert np.all(np.isfinite(grad))


def test_class_default_reduction_is_the_mean_of_per_sample_losses() -> None:
    y_pred = np.linspace(-3.0, 3.0, 24, dtype=np.float32).reshape(6, 4)
    loss = BalancedL1Loss(beta=2.5)(np.zeros_like(y_pred), y_pred)
    expected = reference.balanced_l1(y_pred, BalancedL1Params(beta=2.5)).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("reduction", "reduce"),
    [
        ("sum", np.sum),
        ("sum_over_batch_size", np.mean),
        ("mean", np.mean),
        ("none", lambda v: v),
        (None, lambda v: v),
    ],
)
def test_class_applies_sample_weight_then_the_keras_reduction(reduction: str | None, reduce: Callable) -> None:
    y_pred = np.linspace(-3.0, 3.0, 24, dtype=np.float32).reshape(6, 4)
    sample_weight = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 3.0], dtype=np.float32)
    loss = BalancedL1Loss(formulation="mmdet", beta=0.11, reduction=reduction)
    got = loss(np.zeros_like(y_pred), y_pred, sample_weight=sample_weight)
    per_sample = reference.balanced_l1(y_pred, BalancedL1Params(beta=0.11, formulation="mmdet")).mean(axis=-1)
    np.testing.assert_allclose(np.asarray(got), reduce(per_sample * sample_weight), rtol=1e-6)


def test_class_half_precision_input_gives_a_float32_loss() -> None:
    y_pred = keras.ops.cast(np.full((2, 3), 65504.0), "float16")
    loss = BalancedL1Loss()(keras.ops.zeros((2, 3), "float16"), y_pred)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(float(loss), reference.balanced_l1(65504.0)[()], rtol=1e-6)


def test_empty_batch_gives_no_per_sample_losses() -> None:
    assert balanced_l1_loss(np.zeros((0, 4)), np.zeros((0, 4), dtype=np.float32)).shape == (0,)


def test_class_leaves_an_empty_batch_unreduced_as_keras_does() -> None:
    assert tuple(BalancedL1Loss(reduction="sum")(np.zeros((0, 4)), np.zeros((0, 4))).shape) == (0,)


def test_samples_with_an_empty_last_axis_have_zero_loss() -> None:
    per_sample = balanced_l1_loss(np.zeros((3, 0)), np.zeros((3, 0), dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(per_sample), np.zeros(3, dtype=np.float32))


def test_nan_propagates_to_its_sample_only() -> None:
    y_pred = np.array([[np.nan, 0.5], [0.5, -3.0]], dtype=np.float32)
    loss = np.asarray(balanced_l1_loss(np.zeros_like(y_pred), y_pred))
    assert np.isnan(loss[0]) and np.isfinite(loss[1])


def test_config_round_trip_gives_an_equal_loss() -> None:
    loss = BalancedL1Loss(alpha=0.4, gamma=1.2, beta=0.11, formulation="mmdet", reduction="sum", name="box")
    config = loss.get_config()
    assert config == {
        "name": "box",
        "reduction": "sum",
        "alpha": 0.4,
        "gamma": 1.2,
        "beta": 0.11,
        "formulation": "mmdet",
    }
    assert BalancedL1Loss.from_config(config).get_config() == config


def test_class_and_function_are_registered_for_keras_serialization() -> None:
    loss = BalancedL1Loss(beta=0.11, formulation="mmdet")
    serialized = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert keras.saving.get_registered_name(BalancedL1Loss) == "balanced_l1>BalancedL1Loss"
    assert keras.saving.get_registered_name(balanced_l1_loss) == "balanced_l1>balanced_l1_loss"
    assert isinstance(restored, BalancedL1Loss) and restored.get_config() == loss.get_config()
    assert keras.saving.get_registered_object("balanced_l1>balanced_l1_loss") is balanced_l1_loss


def test_default_name_is_balanced_l1_loss() -> None:
    assert BalancedL1Loss().name == "balanced_l1_loss"


BAD_CALLS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("shapes", lambda: balanced_l1_loss(np.zeros((2, 3)), np.zeros((2, 1), np.float32)), ValueError,
     r"y_true and y_pred must have the same shape, got y_true \(2, 3\) and y_pred \(2, 1\)"),
    ("scalar", lambda: balanced_l1_loss(np.zeros(()), np.zeros((), np.float32)), ValueError,
     "y_pred must have at least one dimension"),
    ("int y_pred", lambda: balanced_l1_loss(np.zeros((2, 3)), np.zeros((2, 3), np.int32)), TypeError,
     "y_pred must be a floating tensor .*, got int32"),
    ("alpha", lambda: balanced_l1_loss(np.zeros((1, 1)), np.zeros((1, 1)), alpha=-0.5), ValueError,
     "alpha must be finite and > 0, got -0.5"),
    ("gamma", lambda: BalancedL1Loss(gamma=float("nan")), ValueError, "gamma must be finite and > 0, got nan"),
    ("beta", lambda: BalancedL1Loss(beta=0), ValueError, "beta must be finite and > 0, got 0$"),
    ("beta type", lambda: BalancedL1Loss(beta="1"), TypeError, "beta must be a real number, got '1'"),
    ("formulation", lambda: BalancedL1Loss(formulation="paper"), ValueError,
     r"formulation must be one of scaled, mmdet, got 'paper'"),
    ("reduction", lambda: BalancedL1Loss(reduction="avg"), ValueError,
     "Invalid value for argument `reduction`.*Received: reduction=avg"),
    ("class shapes", lambda: BalancedL1Loss()(np.zeros((2, 3)), np.zeros((3, 2))), ValueError, "same shape"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_a_clear_error(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()
