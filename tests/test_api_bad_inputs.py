"""Bad inputs of the Python API (the loss, its parameters, the detection helpers), each refused clearly."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from balanced_l1 import BalancedL1Loss, BalancedL1Params, balanced_l1_loss
from balanced_l1.params import check_loss_weight_fits

X = torch.zeros(2, 4)


# weight: real numbers only


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_a_complex_weight_raises_type_error_instead_of_a_complex_loss(dtype):
    with pytest.raises(TypeError, match=rf"weight must be a real tensor \(floating, integer or bool\), got {dtype}"):
        balanced_l1_loss(X, X + 1, weight=torch.ones(2, 4, dtype=dtype))
    with pytest.raises(TypeError, match=r"a complex weight would make the loss complex"):
        BalancedL1Loss()(X, X + 1, weight=torch.ones(4, dtype=dtype))


def test_a_quantized_weight_raises_type_error_without_mentioning_complex():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, and still a dtype a caller may pass
        weight = torch.quantize_per_tensor(torch.ones(2, 4), 0.1, 0, torch.quint8)
    with pytest.raises(TypeError, match=r"weight must be a real tensor .* got torch.quint8$"):
        balanced_l1_loss(X, X, weight=weight)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8, torch.float64])
def test_real_weights_of_any_kind_still_multiply_the_loss(dtype):
    pred = torch.tensor([[0.5, -3.0]])
    weight = torch.tensor([[1, 0]], dtype=dtype)
    loss = balanced_l1_loss(pred, torch.zeros_like(pred), weight=weight, reduction="none")
    assert not loss.is_complex() and loss[0, 1] == 0 and loss[0, 0] > 0


# layouts: dense (strided) tensors only


def _sparse_and_nested() -> list[tuple[str, torch.Tensor, str]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the prototype / beta warnings of sparse CSR and nested tensors
        return [
            ("sparse_coo", X.to_sparse(), r"got layout torch\.sparse_coo; convert it with \.to_dense\(\)"),
            ("sparse_csr", X.to_sparse_csr(), r"got layout torch\.sparse_csr"),
            (
                "nested",
                torch.nested.nested_tensor([torch.zeros(3), torch.zeros(2)]),
                r"got a nested tensor of layout torch\.strided",
            ),
            (
                "jagged",
                torch.nested.nested_tensor([torch.zeros(3), torch.zeros(2)], layout=torch.jagged),
                r"got a nested tensor of layout torch\.jagged",
            ),
        ]


@pytest.mark.parametrize(
    ("kind", "tensor", "message"), _sparse_and_nested(), ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("argument", ["pred", "target", "weight"])
def test_sparse_and_nested_tensors_raise_type_error_naming_the_layout(kind, tensor, message, argument):
    kwargs = {"pred": X, "target": X, "weight": None} | {argument: tensor}
    weight = kwargs.pop("weight")
    with pytest.raises(TypeError, match=rf"^{argument} must be a dense tensor \(layout torch\.strided.*{message}"):
        balanced_l1_loss(kwargs["pred"], kwargs["target"], weight=weight)


# loss_weight: finite results for every accepted value, or a refusal naming the bound


def test_a_loss_weight_that_overflows_float32_is_refused_with_the_bound_and_fits_float64():
    criterion = BalancedL1Loss(loss_weight=1e300)  # finite and >= 0: accepted until a dtype is known
    message = (
        r"loss_weight = 1e\+300 does not fit a float32 loss with a float32 gradient: a nonzero loss_weight must be "
        r"from 1\.4e-45 to 2\.2685\de\+38, .* the largest gradient \(1\.5 with alpha=0\.5"
    )
    with pytest.raises(ValueError, match=message):
        criterion(torch.tensor([0.5]), torch.zeros(1))
    pred = torch.tensor([0.5, -3.0], dtype=torch.float64, requires_grad=True)
    loss = criterion(pred, torch.zeros_like(pred), reduction_override="sum")
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(pred.grad).all()
    assert loss.item() == pytest.approx(1e300 * balanced_l1_loss(pred.detach(), 0 * pred.detach(), reduction="sum"))


def test_the_loss_weight_bound_follows_the_gradient_dtype_and_is_tight():
    params = BalancedL1Params()
    fp32 = float(torch.finfo(torch.float32).max)
    pred = torch.tensor([5.0, -5.0], requires_grad=True)  # outliers: the gradient is gamma = 1.5 exactly
    largest = BalancedL1Loss(loss_weight=fp32 / params.max_gradient)
    loss = largest(pred, torch.zeros(2), reduction_override="sum")
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all()
    half = torch.tensor([0.5], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"does not fit a float32 loss with a float16 gradient.* to 43669\.3"):
        BalancedL1Loss(loss_weight=5e4)(half, torch.zeros_like(half))


def test_a_tiny_loss_weight_that_would_flush_to_zero_is_refused_but_zero_is_accepted():
    with pytest.raises(ValueError, match=r"loss_weight = 1e-300 does not fit a float32 loss"):
        BalancedL1Loss(loss_weight=1e-300)(torch.tensor([0.5]), torch.zeros(1))
    assert BalancedL1Loss(loss_weight=0.0)(torch.tensor([0.5]), torch.zeros(1)).item() == 0.0
    check_loss_weight_fits(0.0, BalancedL1Params(), *[_range(torch.float16)] * 2)  # 0 fits everything


def _range(dtype):
    from balanced_l1.functional import _dtype_range

    return _dtype_range(dtype)


def test_extreme_accepted_alpha_gamma_beta_give_finite_losses_and_gradients():
    """Every accepted combination of extreme parameters: finite loss and gradient, or a refusal naming why.

    The inputs are those whose true loss is representable: ``|L(x)| <= max_gradient * |x|``, kept below a
    quarter of the dtype's largest value (beyond that an inf is the true value's, as for any loss).
    """
    import itertools

    values = [1e-300, 1e-38, 1e-6, 0.11, 1.0, 1e6, 1e38, 1e300]
    checked = 0
    for dtype, alpha, ratio, beta, formulation in itertools.product(
        (torch.float32, torch.float64), values, (1e-300, 1e-10, 1.0, 80.0), values, ("scaled", "mmdet")
    ):
        try:
            params = BalancedL1Params(alpha, alpha * ratio, beta, formulation)
        except ValueError:  # gamma = alpha * ratio underflowed to 0: not a parameter set at all
            continue
        x = torch.tensor([0.0, 1e-30, 0.5, 1.0, 3.0], dtype=torch.float64) * beta
        x = torch.cat([x, torch.tensor([0.5, 3.0], dtype=torch.float64)])
        x = x[x * params.max_gradient < torch.finfo(dtype).max / 4]
        pred = x.to(dtype).requires_grad_(True)
        try:
            loss = balanced_l1_loss(
                pred, torch.zeros_like(pred), alpha=params.alpha, gamma=params.gamma, beta=beta,
                formulation=formulation, reduction="none",
            )  # fmt: skip
        except ValueError as error:  # refused with the reason: the other allowed answer
            assert "cannot be represented" in str(error) or "gradient of the loss" in str(error), error
            continue
        loss.sum().backward()
        setting = (dtype, alpha, ratio, beta, formulation)
        assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all(), setting
        checked += 1
    assert checked > 200


# attributes: the constructor's rules on every assignment


@pytest.mark.parametrize(
    ("name", "value", "error", "message"),
    [
        ("loss_weight", -5, ValueError, r"loss_weight must be finite and >= 0, got -5"),
        ("loss_weight", math.inf, ValueError, r"loss_weight must be finite and >= 0, got inf"),
        ("loss_weight", "2", TypeError, r"loss_weight must be a real number, got '2'"),
        ("alpha", -1.0, ValueError, r"alpha must be finite and > 0, got -1.0"),
        ("alpha", 0.01, ValueError, r"gamma / alpha must be at most 80 .*ratio 150"),
        ("gamma", True, TypeError, r"gamma must be a real number, got True"),
        ("beta", math.nan, ValueError, r"beta must be finite and > 0, got nan"),
        ("formulation", "paper", ValueError, r"formulation must be one of scaled, mmdet, got 'paper'"),
        ("reduction", "avg", ValueError, r"reduction must be one of none, mean, sum, got 'avg'"),
    ],
)
def test_assigning_a_bad_parameter_after_construction_raises_at_once_and_keeps_the_old_value(
    name, value, error, message
):
    criterion = BalancedL1Loss()
    before = getattr(criterion, name)
    with pytest.raises(error, match=message):
        setattr(criterion, name, value)
    assert getattr(criterion, name) == before


def test_good_assignments_are_stored_checked_and_used():
    criterion = BalancedL1Loss()
    criterion.loss_weight = np.float32(2.0)
    criterion.beta = np.float64(0.11)
    criterion.gamma = 3.0
    criterion.alpha = 0.1  # ratio 30: valid once gamma is 3
    assert type(criterion.loss_weight) is float and type(criterion.beta) is float
    x = torch.tensor([0.05, 0.5])
    expected = 2.0 * balanced_l1_loss(x, 0 * x, alpha=0.1, gamma=3.0, beta=0.11)
    torch.testing.assert_close(criterion(x, 0 * x), expected)
    assert "alpha=0.1, gamma=3.0, beta=0.11" in repr(criterion)


def test_the_module_still_deep_copies_pickles_and_loads_state():
    import copy
    import pickle

    criterion = BalancedL1Loss(beta=0.5, loss_weight=3.0, formulation="mmdet")
    for clone in (copy.deepcopy(criterion), pickle.loads(pickle.dumps(criterion))):
        assert repr(clone) == repr(criterion)
        clone.loss_weight = 1.0
        with pytest.raises(ValueError):
            clone.loss_weight = -1.0


def test_keras_loss_attributes_follow_the_constructor_rules():
    pytest.importorskip("keras")
    from balanced_l1.keras import BalancedL1Loss as KerasBalancedL1Loss

    loss = KerasBalancedL1Loss()
    with pytest.raises(ValueError, match=r"beta must be finite and > 0, got -1"):
        loss.beta = -1
    with pytest.raises(ValueError, match=r"gamma / alpha must be at most 80"):
        loss.alpha = 0.001
    with pytest.raises(ValueError, match=r"formulation must be one of"):
        loss.formulation = "paper"
    assert (loss.alpha, loss.gamma, loss.beta, loss.formulation) == (0.5, 1.5, 1.0, "scaled")
    loss.beta = np.float32(0.5)
    assert type(loss.beta) is float and loss.get_config()["beta"] == 0.5
    loss.name = "renamed"  # Keras' own attributes are untouched
    assert loss.name == "renamed"


def test_jax_refuses_a_complex_weight():
    pytest.importorskip("jax")
    from balanced_l1.jax import balanced_l1_loss as jax_loss

    x = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(TypeError, match=r"weight must be a real array .* got complex64 \(a complex weight"):
        jax_loss(x, x, weight=np.ones(4, dtype=np.complex64))
    assert float(jax_loss(x + 1, x, weight=np.ones(4, dtype=np.int32))) > 0


# detection: bool flags are bools; the IoU-balanced sampler's inputs


@pytest.mark.parametrize("value", ["yes", 1, True, np.str_("roi")])
def test_use_balanced_l1_and_use_box_loss_placement_must_be_one_of_the_placements(value):
    pytest.importorskip("torchvision")
    from balanced_l1.detection import build_small_faster_rcnn, use_balanced_l1, use_box_loss

    model = build_small_faster_rcnn(3)
    classes = (type(model.rpn), type(model.roi_heads))
    message = rf"placement must be one of roi, rpn, both, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        use_balanced_l1(model, placement=value)
    with pytest.raises(ValueError, match=message):
        use_box_loss(model, "l1", placement=value)
    assert (type(model.rpn), type(model.roi_heads)) == classes  # nothing switched


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_iou_balanced_sampler_refuses_non_finite_ious_naming_the_proposal(bad):
    pytest.importorskip("torchvision")
    from balanced_l1.detection import IoUBalancedNegativeSampler

    labels = torch.tensor([1, 0, 0, 0, 0])
    ious = torch.tensor([0.9, 0.1, bad, 0.3, 0.2])
    for mode in ("paper", "mmdet"):
        sampler = IoUBalancedNegativeSampler(4, 0.25, mode=mode)
        with pytest.raises(ValueError, match=rf"image 1: ious must be finite .* got {bad} at proposal 2 \(1 of 5"):
            sampler([labels, labels], [ious.clamp(0, 1).nan_to_num(0.5), ious])


@pytest.mark.parametrize("generator", ["seed", 0, np.random.default_rng(0)])
def test_samplers_refuse_a_generator_that_is_not_a_torch_generator(generator):
    pytest.importorskip("torchvision")
    from balanced_l1.detection import IoUBalancedNegativeSampler
    from balanced_l1.detection.instance_sampling import InstanceBalancedPositiveSampler
    from balanced_l1.detection.rpn_sampling import NegativeCappedSampler

    message = r"generator must be a torch\.Generator or None, got .* \(for a seed, pass torch\.Generator\(\)"
    with pytest.raises(TypeError, match=message):
        IoUBalancedNegativeSampler(4, 0.25, generator=generator)
    with pytest.raises(TypeError, match=message):
        InstanceBalancedPositiveSampler(4, 0.25, generator=generator)
    with pytest.raises(TypeError, match=message):
        NegativeCappedSampler(4, 0.25, neg_pos_ub=5, generator=generator)
    assert IoUBalancedNegativeSampler(4, 0.25, generator=torch.Generator()).generator is not None
