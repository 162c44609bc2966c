"""Balanced L1 loss for PyTorch: the one place the PyTorch formula lives."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from balanced_l1.params import (
    AVG_FACTOR_EPS,
    BalancedL1Params,
    check_avg_factor,
    check_reduction,
    params_for,
)

__all__ = ["balanced_l1_loss"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _loss_and_grad(
    pred: Tensor,
    target: Tensor,
    alpha: float,
    gamma: float,
    beta: float,
    b: float,
    q: float,
    reduce_sum: bool,
) -> tuple[Tensor, Tensor]:
    """Element-wise loss (or its sum) and gradient in one branch-free pass over the inputs.

    With ``a = |x|``, ``k = b / beta`` and ``u = min(k a, b)`` both formulations read::

        L     = c1 * ((u + q) * log1p(u) - u) + gamma * max(a - beta, 0),   c1 = alpha * beta / b
        dL/dx = sign(x) * alpha * (log1p(u) + [a < beta] * (q - 1) / (1 + u))

    ``u`` never exceeds ``b``, so no branch can overflow (the classic ``torch.where`` NaN: the
    unused branch of ``b * |x|`` overflowing float16), and for the ``scaled`` formulation no
    ``torch.where`` is needed at all. The gradient is returned too: it is the only tensor saved
    for backward, so backward is one multiply.
    """
    diff = pred - target
    a = diff.abs()
    if b / beta <= torch.finfo(a.dtype).max:
        u = torch.mul(a, b / beta).clamp_max_(b)
    else:  # tiny beta: b / beta itself would overflow the dtype
        u = torch.div(a, beta).clamp_max_(1.0).mul_(b)
    log_u = torch.log1p(u)
    grad = log_u.mul(alpha)
    if q != 1.0:  # mmdet with beta != 1: the extra inlier term of its gradient, maybe negative
        grad.add_(torch.where(torch.lt(a, beta), (alpha * (q - 1.0)) / (u + 1.0), 0.0)).mul_(diff.sign())
    else:  # scaled: the magnitude is >= 0, so copying the sign is one cheap pass
        grad.copysign_(diff)
    loss = torch.add(u, q).mul_(log_u).sub_(u).mul_(alpha * beta / b)
    loss.add_(a.sub_(beta).clamp_min_(0.0), alpha=gamma)
    return (loss.sum() if reduce_sum else loss), grad


def _input_grads(ctx: Any, grad_loss: Tensor | None) -> tuple[Tensor | None, ...]:
    """Backward of both Functions: ``grad_loss * dL/dx`` for ``pred`` and its negative for ``target``.

    The gradient of the second (gradient) output is ignored: that output is differentiable only so
    that, with ``create_graph=True``, a second derivative reaches :class:`_FirstOrderOnly` and raises.
    """
    (grad,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 8
    grad_pred = grad_loss * grad
    if torch.is_grad_enabled():  # create_graph=True: make a later differentiation fail loudly
        grad_pred = _FirstOrderOnly.apply(grad_pred, grad)
    grad_target = -grad_pred if ctx.needs_input_grad[1] else None
    return (grad_pred if ctx.needs_input_grad[0] else None, grad_target, None, None, None, None, None, None)


class _BalancedL1Function(torch.autograd.Function):
    """Autograd for eager mode and ``torch.compile`` (one fused kernel each way there).

    The classic ``forward(ctx, ...)`` form: its ``apply`` is about 30 us cheaper per call than the
    ``setup_context`` form, whose ``apply`` binds the arguments through ``inspect.signature``.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> tuple[Tensor, Tensor]:
        loss, grad = _loss_and_grad(*args)
        ctx.save_for_backward(grad)
        ctx.set_materialize_grads(False)
        return loss, grad

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_of_grad: Tensor | None) -> tuple[Tensor | None, ...]:
        return _input_grads(ctx, grad_loss)


class _BalancedL1TransformFunction(torch.autograd.Function):
    """The same computation for ``torch.func`` transforms (``grad``, ``vmap``), which need ``setup_context``."""

    generate_vmap_rule = True
    forward = staticmethod(_loss_and_grad)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        ctx.save_for_backward(output[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_of_grad: Tensor | None) -> tuple[Tensor | None, ...]:
        return _input_grads(ctx, grad_loss)


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on the gradient that raises if anything differentiates through it.

    The saved gradient is a function of ``pred`` that backward uses as a constant; without this
    guard a second derivative would silently miss its ``d(grad)/d(pred)`` term and come out zero.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_pred: Tensor, anchor: Tensor) -> Tensor:
        return grad_pred.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None]:
        raise RuntimeError(
            "balanced_l1_loss does not support second derivatives (a backward through a gradient taken "
            "with create_graph=True, torch.func.hessian, nested torch.func.grad); only first-order "
            "gradients are available"
        )


def _check_tensors(pred: object, target: object, weight: object) -> None:
    for name, value in (("pred", pred), ("target", target)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {value.dtype}"
            )
    assert isinstance(pred, Tensor) and isinstance(target, Tensor)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and target "
            f"{tuple(target.shape)} (no broadcasting: expand explicitly if that is what you mean)"
        )
    if weight is None:
        return
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    try:
        broadcast = torch.broadcast_shapes(weight.shape, pred.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != pred.shape:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} is not broadcastable to pred's shape {tuple(pred.shape)}"
        )


def _check_avg_factor_tensor(avg_factor: object) -> None:
    if isinstance(avg_factor, Tensor) and avg_factor.dim() != 0:
        raise ValueError(
            f"avg_factor must be a number or a 0-dim tensor, got a tensor of shape {tuple(avg_factor.shape)}"
        )


def _compute_dtype(pred: Tensor, target: Tensor) -> torch.dtype:
    dtype = torch.promote_types(pred.dtype, target.dtype)
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def balanced_l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    formulation: str = "scaled",
) -> Tensor:
    r"""Balanced L1 loss of Libra R-CNN (Pang et al., CVPR 2019, arXiv:1904.02701).

    With :math:`a = |x|`, :math:`x = \text{pred} - \text{target}` and :math:`b = e^{\gamma/\alpha} - 1`,
    the default ``"scaled"`` formulation is :math:`L_\beta(x) = \beta L_1(x / \beta)`:

    .. math::

        L(x) = \begin{cases}
            \frac{\alpha}{b}(b a + \beta)\ln\!\left(1 + \frac{b a}{\beta}\right) - \alpha a & a < \beta \\
            \gamma a + \left(\frac{\gamma}{b} - \alpha\right)\beta & \text{otherwise}
        \end{cases}

    Its gradient :math:`\alpha \ln(1 + b a / \beta)` rises from 0, meets the outlier cap
    :math:`\gamma` continuously at :math:`a = \beta` and never exceeds it. ``"mmdet"`` is
    mmdetection's expression: identical at ``beta = 1``, but for ``beta != 1`` its gradient jumps at
    ``beta`` and starts at ``alpha * (1 - beta) / beta`` (4.04 for ``beta = 0.11``).

    Numerical notes: the computation never evaluates a branch outside its domain, so finite
    inputs give finite losses and gradients in every dtype; float16/bfloat16 inputs are computed
    and returned in float32 (the gradient has ``pred``'s dtype). For ``|x|`` far below ``beta`` the
    loss value (about :math:`\alpha b x^2 / 2\beta`) is the difference of two terms of size
    :math:`\alpha |x|`, so its absolute error is about machine epsilon times :math:`\alpha |x|`; the
    gradient has no such cancellation. Second derivatives are not supported and raise an error.

    Args:
        pred: predicted regression targets, a floating tensor of any shape.
        target: regression targets, of the same shape as ``pred`` (no broadcasting).
        alpha: inlier gradient scale, finite and > 0.
        gamma: outlier gradient (cap), finite and > 0.
        beta: inflection point, finite and > 0 (Libra RetinaNet uses 0.11).
        weight: optional tensor broadcastable to ``pred``'s shape; multiplies the element-wise loss.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, divide the (weighted) sum by ``avg_factor + eps`` instead of the
            number of elements (as mmdetection does). A number or a 0-dim tensor (never read on the
            host). Not allowed with ``"sum"``; ignored with ``"none"``.
        formulation: ``"scaled"`` (default) or ``"mmdet"``.

    Returns:
        The loss: a scalar for ``"mean"``/``"sum"``, ``pred``'s shape for ``"none"``.

    Example:
        >>> import torch
        >>> from balanced_l1 import balanced_l1_loss
        >>> pred = torch.tensor([0.05, 0.5, -3.0], requires_grad=True)
        >>> loss = balanced_l1_loss(pred, torch.zeros(3), reduction="sum")
        >>> loss.backward()
        >>> pred.grad
        tensor([ 0.3350,  1.1777, -1.5000])
    """
    compiling = torch.compiler.is_compiling()
    if compiling:  # traced once; dynamo does not look through the cache
        params = BalancedL1Params(alpha, gamma, beta, formulation)
    else:
        params = params_for(alpha, gamma, beta, formulation)
    check_reduction(reduction)
    check_avg_factor(avg_factor, reduction)
    _check_avg_factor_tensor(avg_factor)
    _check_tensors(pred, target, weight)

    dtype = _compute_dtype(pred, target)
    reduce_sum = reduction != "none" and weight is None
    if compiling or not torch._C._are_functorch_transforms_active():
        function: type[torch.autograd.Function] = _BalancedL1Function
    else:
        function = _BalancedL1TransformFunction
    loss, _ = function.apply(
        pred.to(dtype), target.to(dtype), params.alpha, params.gamma, params.beta, params.b, params.q, reduce_sum
    )
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    total = loss if reduce_sum else loss.sum()
    if reduction == "sum":
        return total
    if avg_factor is not None:
        return total / (avg_factor + AVG_FACTOR_EPS)
    return total / pred.numel() if pred.numel() > 0 else total
