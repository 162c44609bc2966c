"""The boundary of what is accepted: numbers, dtypes that cannot hold the parameters, the exact mmdet kink, accuracy."""

import fractions
import math

import numpy as np
import pytest
import torch

from balanced_l1 import BalancedL1Loss, BalancedL1Params, balanced_l1_loss
from balanced_l1.functional import _BLOCK, _cached_constants, _grad_scale, _loss_and_grad
from balanced_l1.params import check_number, inlier_threshold
from balanced_l1.reference import balanced_l1, balanced_l1_grad

HUGE = 10**400


def _loss_and_grad_of(x, dtype=torch.float32, **kwargs):
    pred = torch.as_tensor(x, dtype=dtype).reshape(-1).clone().requires_grad_(True)
    loss = balanced_l1_loss(pred, torch.zeros_like(pred), reduction="none", **kwargs)
    loss.sum().backward()
    return loss.detach(), pred.grad


# check_number


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(0.5), np.int64(2), fractions.Fraction(1, 2)])
def test_check_number_accepts_python_and_numpy_scalars_as_float(value):
    result = check_number("x", value, strictly_positive=True)
    assert type(result) is float and result == float(value)


@pytest.mark.parametrize("value", [True, np.bool_(True), "1", None, torch.tensor(1.0), np.ones(1)])
def test_check_number_rejects_non_numbers_with_type_error(value):
    with pytest.raises(TypeError, match=r"x must be a real number, got .* of type"):
        check_number("x", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, HUGE, -HUGE])
def test_check_number_rejects_non_finite_and_huge_integers_with_value_error(value):
    with pytest.raises(ValueError, match=r"x must be finite, got"):
        check_number("x", value)


def test_check_number_names_a_huge_integer_by_its_size_not_its_digits():
    with pytest.raises(ValueError, match=r"got an integer of 1329 bits \(too large for a float\)$"):
        check_number("x", HUGE)


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"strictly_positive": True}, 0.0, r"x must be finite and > 0, got 0.0"),
        ({"minimum": 0.0}, -1, r"x must be finite and >= 0, got -1"),
        ({"minimum": 0.0, "maximum": 1.0}, 1.5, r"x must be finite and >= 0 and <= 1, got 1.5"),
    ],
)
def test_check_number_bounds_are_named_in_the_message(kwargs, value, message):
    with pytest.raises(ValueError, match=message):
        check_number("x", value, **kwargs)


def test_check_number_integer_mode_returns_int_and_rejects_floats_and_bounds():
    assert check_number("n", np.int64(3), minimum=1, integer=True) == 3
    with pytest.raises(TypeError, match=r"n must be an integer, got 3.0 of type float"):
        check_number("n", 3.0, integer=True)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got 0"):
        check_number("n", 0, minimum=1, integer=True)
    with pytest.raises(TypeError, match=r"n must be an integer, got True"):
        check_number("n", True, integer=True)


# parameters as numbers


@pytest.mark.parametrize("name", ["alpha", "gamma", "beta"])
def test_numpy_scalar_parameters_equal_python_floats(name):
    x = torch.tensor([0.05, 0.5, 3.0])
    for value in (np.float32(0.75), np.float64(0.75)):
        torch.testing.assert_close(
            balanced_l1_loss(x, 0 * x, **{name: value}), balanced_l1_loss(x, 0 * x, **{name: 0.75})
        )


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_huge_integer_parameter_raises_value_error_not_overflow_error(name):
    with pytest.raises(ValueError, match=rf"{name} must be finite and > 0, got an integer of 1329 bits"):
        balanced_l1_loss(torch.zeros(1), torch.zeros(1), **{name: HUGE})


# parameters that the dtype cannot hold


def test_beta_beyond_float32_raises_in_float32_and_is_finite_in_float64():
    with pytest.raises(ValueError, match=r"beta = 1e\+300 cannot be represented in float32 .* use float64 inputs"):
        balanced_l1_loss(torch.tensor([0.5]), torch.zeros(1), beta=1e300)
    loss, grad = _loss_and_grad_of([0.5, 1e300, -3.0], torch.float64, beta=1e300)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_huge_alpha_with_small_gamma_raises_naming_the_constant_that_overflows():
    with pytest.raises(ValueError, match=r"alpha \* beta / b = 1e\+40 cannot be represented in float32"):
        balanced_l1_loss(torch.tensor([0.5]), torch.zeros(1), alpha=1e20, gamma=1.0)


def test_alpha_beyond_float32_raises_a_clear_value_error():
    with pytest.raises(ValueError, match=r"alpha = 1e\+300 cannot be represented in float32"):
        balanced_l1_loss(torch.tensor([0.5]), torch.zeros(1), alpha=1e300, gamma=1e300)


def test_mmdet_gradient_beyond_float16_raises_and_fits_float32():
    with pytest.raises(
        ValueError, match=r"gradient of the loss reaches 500000 .* beyond float16's largest finite value 65504"
    ):
        balanced_l1_loss(
            torch.ones(1, dtype=torch.float16), torch.zeros(1, dtype=torch.float16), beta=1e-6, formulation="mmdet"
        )
    _, grad = _loss_and_grad_of([1e-12, 1e-3, 1.0], torch.float32, beta=1e-6, formulation="mmdet")
    assert torch.isfinite(grad).all() and grad.max().item() == pytest.approx(0.5 * (1 - 1e-6) / 1e-6, rel=1e-3)


@pytest.mark.parametrize("formulation", ["scaled", "mmdet"])
@pytest.mark.parametrize("beta", [1e-3, 0.11, 2.5])
def test_max_gradient_bounds_the_reference_gradient_and_is_reached(formulation, beta):
    params = BalancedL1Params(beta=beta, formulation=formulation)
    x = np.concatenate([np.linspace(0, 3 * beta, 20001), [1e-9 * beta, np.nextafter(beta, 0)]])
    grad = np.abs(balanced_l1_grad(x[1:], params))
    assert grad.max() <= params.max_gradient * (1 + 1e-12)
    assert grad.max() == pytest.approx(params.max_gradient, rel=1e-3)


# the mmdet kink in float32


def test_inlier_threshold_rounds_beta_up_to_the_format():
    assert inlier_threshold(0.11, 24, -149) == float(np.nextafter(np.float32(0.11), np.float32(1)))
    assert inlier_threshold(0.5, 24, -149) == 0.5
    assert inlier_threshold(0.11, 53, -1074) == 0.11


def test_float32_input_just_below_beta_is_an_inlier_as_in_the_float64_reference():
    x32 = np.float32(0.11)  # 0.10999999940395355 < 0.11
    params = BalancedL1Params(beta=0.11, formulation="mmdet")
    loss, grad = _loss_and_grad_of([x32], torch.float32, beta=0.11, formulation="mmdet")
    assert grad.item() == pytest.approx(balanced_l1_grad(float(x32), params), rel=1e-6)
    assert grad.item() == pytest.approx(1.7014, abs=1e-4)
    assert loss.item() == pytest.approx(balanced_l1(float(x32), params), rel=1e-6)


# avg_factor


@pytest.mark.parametrize("avg_factor", [np.int64(-3), np.float64(-3), -3, HUGE])
def test_negative_or_huge_host_avg_factor_raises_value_error(avg_factor):
    with pytest.raises(ValueError, match=r"avg_factor must be finite and >= 0, got"):
        balanced_l1_loss(torch.zeros(2), torch.zeros(2), avg_factor=avg_factor)


def test_numpy_avg_factor_equals_the_python_number():
    pred, target = torch.randn(6), torch.randn(6)
    torch.testing.assert_close(
        balanced_l1_loss(pred, target, avg_factor=np.int64(3)), balanced_l1_loss(pred, target, avg_factor=3.0)
    )


def test_string_avg_factor_raises_type_error():
    with pytest.raises(TypeError, match=r"avg_factor must be a number, a 0-dim tensor or None, got '3' of type str"):
        balanced_l1_loss(torch.zeros(2), torch.zeros(2), avg_factor="3")


def test_avg_factor_on_another_device_raises_value_error():
    with pytest.raises(ValueError, match=r"avg_factor is on meta but pred is on cpu"):
        balanced_l1_loss(torch.zeros(2), torch.zeros(2), avg_factor=torch.tensor(2.0, device="meta"))


def test_boolean_avg_factor_tensor_raises_type_error():
    with pytest.raises(TypeError, match=r"avg_factor must be a real \(integer or floating\) tensor, got torch.bool"):
        balanced_l1_loss(torch.zeros(2), torch.zeros(2), avg_factor=torch.tensor(True))


@pytest.mark.parametrize("avg_factor", [-5, "3", math.nan])
def test_any_avg_factor_is_ignored_with_reduction_none(avg_factor):
    pred = torch.randn(4)
    torch.testing.assert_close(
        balanced_l1_loss(pred, 0 * pred, reduction="none", avg_factor=avg_factor),
        balanced_l1_loss(pred, 0 * pred, reduction="none"),
    )


# loss_weight and TorchScript


def test_loss_weight_has_one_rule_for_the_module_and_the_detection_adapters():
    box_loss = pytest.importorskip("balanced_l1.detection.box_loss")
    for bad, error in ((-1.0, ValueError), (math.nan, ValueError), ("2", TypeError), (True, TypeError)):
        with pytest.raises(error) as from_module:
            BalancedL1Loss(loss_weight=bad)
        with pytest.raises(error) as from_config:
            box_loss.BoxLossConfig(loss_weight=bad)
        assert str(from_module.value) == str(from_config.value)
    assert BalancedL1Loss(loss_weight=np.float32(2.0)).loss_weight == 2.0


def test_torch_jit_script_of_the_module_is_refused_with_a_clear_message():
    with pytest.raises(RuntimeError, match=r"BalancedL1Loss can not be compiled with torch.jit.script.*torch.compile"):
        torch.jit.script(torch.nn.Sequential(BalancedL1Loss()))


# accuracy and the eager CPU blocks


def _reference_magnitudes() -> np.ndarray:
    magnitudes = np.logspace(-30, np.log10(65504), 1001)
    return np.concatenate([[0.0], magnitudes, -magnitudes])


def _assert_near_reference(x, loss, grad, params, loss_eps, grad_eps, grad_floor):
    """The loss within a few ulps of |L| + alpha |x| (its small-|x| cancellation); the gradient within a few
    ulps of its terms (mmdet's two terms cancel where its gradient crosses zero, for beta > 1)."""
    expected_loss, expected_grad = balanced_l1(x, params), balanced_l1_grad(x, params)
    np.testing.assert_array_less(
        np.abs(loss - expected_loss), 4 * loss_eps * (np.abs(expected_loss) + 0.5 * np.abs(x)) + 1e-300
    )
    np.testing.assert_array_less(
        np.abs(grad - expected_grad), 4 * grad_eps * (np.abs(expected_grad) + 0.5 * abs(params.q - 1)) + grad_floor
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(("formulation", "beta"), [("scaled", 0.11), ("scaled", 1.0), ("mmdet", 0.11), ("mmdet", 2.5)])
def test_accuracy_against_the_float64_reference_from_1e_30_to_65504(dtype, formulation, beta):
    loss, grad = _loss_and_grad_of(_reference_magnitudes(), dtype, beta=beta, formulation=formulation)
    x = torch.as_tensor(_reference_magnitudes(), dtype=dtype).double().numpy()
    params = BalancedL1Params(beta=beta, formulation=formulation)
    info = torch.finfo(dtype)
    _assert_near_reference(
        x,
        loss.double().numpy(),
        grad.double().numpy(),
        params,
        torch.finfo(loss.dtype).eps,
        info.eps,
        info.smallest_normal * info.eps,
    )


@pytest.mark.parametrize("formulation", ["scaled", "mmdet"])
@pytest.mark.parametrize("reduce_sum", [True, False])
def test_eager_cpu_blocks_give_the_whole_tensor_result(formulation, reduce_sum):
    n = 2 * _BLOCK + 123  # two full blocks and a partial one
    pred, target = torch.randn(n) * 0.3, torch.randn(n) * 0.3
    c = _cached_constants(0.5, 1.5, 0.11, formulation, torch.float32, torch.float32)
    loss_blocks, grad_blocks = _loss_and_grad(pred, target, c, reduce_sum, True)
    loss_whole, grad_whole = _loss_and_grad(pred, target, c, reduce_sum, False)
    scale = _grad_scale(c, True)
    assert scale == (0.5 if formulation == "scaled" else 1.0)  # the scaled blocks leave alpha to backward
    torch.testing.assert_close(grad_blocks * scale, grad_whole, rtol=2.5e-7, atol=0)
    torch.testing.assert_close(loss_blocks, loss_whole, rtol=1e-5 if reduce_sum else 0, atol=0)


@pytest.mark.parametrize(("formulation", "beta"), [("scaled", 0.11), ("scaled", 1.0), ("mmdet", 0.11), ("mmdet", 2.5)])
def test_accuracy_of_the_eager_cpu_blocks_against_the_float64_reference(formulation, beta):
    x = np.resize(_reference_magnitudes(), 2 * _BLOCK + 77)
    pred = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    loss = balanced_l1_loss(pred, torch.zeros_like(pred), beta=beta, formulation=formulation, reduction="none")
    loss.backward(torch.full_like(loss, 3.0))  # an element-wise grad_loss: alpha is not folded into a scalar
    pred_sum = pred.detach().clone().requires_grad_(True)
    total = balanced_l1_loss(pred_sum, torch.zeros_like(pred_sum), beta=beta, formulation=formulation, reduction="sum")
    total.backward()
    x64 = pred.detach().double().numpy()
    params = BalancedL1Params(beta=beta, formulation=formulation)
    eps = torch.finfo(torch.float32).eps
    for grad in (pred.grad.double().numpy() / 3.0, pred_sum.grad.double().numpy()):
        _assert_near_reference(x64, loss.detach().double().numpy(), grad, params, eps, eps, 1e-45)
    np.testing.assert_allclose(total.item(), balanced_l1(x64, params).sum(), rtol=1e-5)


def test_eager_cpu_blocks_never_turn_a_huge_upstream_gradient_into_nan():
    # alpha * grad_loss overflows float32 while every true gradient element is finite: backward must not
    # fold alpha into that scalar (inf * 0 = NaN at x = 0)
    pred = torch.zeros(2 * _BLOCK, requires_grad=True)
    with torch.no_grad():
        pred[1::2] = 0.05
    loss = balanced_l1_loss(pred, torch.zeros_like(pred), alpha=10.0, gamma=1.5, reduction="sum")
    (loss * 1e38).backward()
    expected = 1e38 * balanced_l1_grad(np.array([0.0, 0.05]), BalancedL1Params(alpha=10.0, gamma=1.5))
    assert torch.isfinite(pred.grad).all()
    np.testing.assert_allclose(pred.grad[:2].double().numpy(), expected, rtol=1e-6)


def test_eager_cpu_blocks_keep_the_input_shape_and_non_contiguous_inputs():
    pred = torch.randn(3, 2 * _BLOCK).t().requires_grad_(True)  # non-contiguous
    target = torch.randn(2 * _BLOCK, 3)
    loss = balanced_l1_loss(pred, target, reduction="none")
    loss.sum().backward()
    expected = balanced_l1_grad(pred.detach().double().numpy() - target.double().numpy(), BalancedL1Params())
    assert loss.shape == pred.shape and pred.grad.shape == pred.shape
    np.testing.assert_allclose(pred.grad.double().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_the_number_rules_have_one_checker_used_by_params_samplers_pyramid_and_coco_data():
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "balanced_l1"
    users = [
        "params.py",
        "detection/_random_draws.py",
        "detection/iou_balanced_sampling.py",
        "detection/rpn_sampling.py",
    ]
    users += ["detection/bfp.py", "detection/libra.py", "detection/models.py", "experiments/data/coco_annotations.py"]
    users += ["experiments/data/synthetic.py"]
    for name in users:
        assert "check_number(" in (src / name).read_text(), name
    second_checkers = [
        f"{path.relative_to(src)}: {match}"
        for path in src.rglob("*.py")
        for match in re.findall(r"^def (_?is_(?:int|real|number)\w*)\(", path.read_text(), flags=re.M)
        if "check_number(" not in path.read_text()
    ]
    assert not second_checkers, second_checkers


def test_params_has_no_dead_aliases_or_arguments():
    import inspect

    from balanced_l1 import params

    assert not hasattr(params, "Formulation") and not hasattr(params, "Reduction")
    assert list(inspect.signature(params.check_reduction).parameters) == ["reduction"]
    assert list(inspect.signature(params.check_formulation).parameters) == ["formulation"]
