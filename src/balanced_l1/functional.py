"""Balanced L1 loss for PyTorch: the one place the PyTorch formula lives."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from balanced_l1.params import (
    AVG_FACTOR_EPS,
    BalancedL1Params,
    DtypeRange,
    check_avg_factor,
    check_reduction,
    compute_dtype_name,
    inlier_threshold,
    params_for,
)

__all__ = ["balanced_l1_loss"]


#: Elements per block of the eager CPU path: its five 1 MiB float32 buffers stay in the last-level cache,
#: and 16 blocks per 4M elements keep the per-block dispatch small (1 << 17: measured slower on an EPYC).
_BLOCK = 1 << 18


class _Constants(NamedTuple):
    """What the computation needs, derived once per parameters and dtypes (see :func:`_constants`)."""

    alpha: float
    gamma: float
    beta: float
    b: float
    k: float  # b / beta, or 0.0 where that overflows the dtype (then u = m / beta * b)
    c1: float  # alpha * beta / b
    q: float
    jump: float  # alpha * (q - 1): mmdet's extra inlier gradient at u = 0; 0.0 for scaled
    threshold: float  # beta rounded up to the dtype: a < threshold there is exactly a < beta


class _Scalars(NamedTuple):
    """The constants the blocks path multiplies and adds by, as 0-dim tensors of the input's dtype."""

    one: Tensor
    k: Tensor
    neg_c1: Tensor


def _dtype_range(dtype: torch.dtype) -> DtypeRange:
    return DtypeRange.of(str(dtype).removeprefix("torch."), torch.finfo(dtype))


def _constants(
    alpha: object, gamma: object, beta: object, formulation: object, dtype: torch.dtype, grad_dtype: torch.dtype
) -> _Constants:
    """Validate the parameters, check that they fit ``dtype`` and ``grad_dtype``, derive the constants."""
    compiling = torch.compiler.is_compiling()
    # traced once under torch.compile, where dynamo does not look through the caches
    p = BalancedL1Params(alpha, gamma, beta, formulation) if compiling else params_for(alpha, gamma, beta, formulation)  # type: ignore[arg-type]
    compute = _dtype_range(dtype)
    p.check_fits(compute, _dtype_range(grad_dtype), cached=not compiling)
    mantissa_bits = 2 - math.frexp(torch.finfo(dtype).eps)[1]  # eps = 2 ** (1 - bits)
    min_exponent = math.frexp(compute.smallest)[1] - 1
    k = p.b / p.beta
    return _Constants(
        alpha=p.alpha,
        gamma=p.gamma,
        beta=p.beta,
        b=p.b,
        k=k if k <= compute.max else 0.0,
        c1=p.alpha * p.beta / p.b,
        q=p.q,
        jump=p.alpha * (p.q - 1.0),
        threshold=inlier_threshold(p.beta, mantissa_bits, min_exponent),
    )


_cached_constants = functools.lru_cache(maxsize=256, typed=True)(_constants)


def _fill(
    pred: Tensor,
    target: Tensor,
    c: _Constants,
    out: tuple[Tensor, ...] | None = None,
    scale_grad: bool = True,
    scalars: _Scalars | None = None,
) -> tuple[Tensor, Tensor]:
    """Element-wise loss and gradient in one branch-free pass, into the 6 buffers ``out`` or fresh ones.

    With ``a = |x|``, ``m = min(a, beta)``, ``u = b m / beta`` and ``w = 1 + u``, both formulations read::

        L     = c1 * ((u + q) * log1p(u) - u) + gamma * (a - m),            c1 = alpha * beta / b
        dL/dx = sign(x) * alpha * (log1p(u) + [a < beta] * (q - 1) / w)

    ``u`` never exceeds ``b``, so no branch can overflow (the classic ``torch.where`` NaN: the unused
    branch of ``b * |x|`` overflowing float16), and ``a - m`` is exact (0 for every inlier).
    ``log1p(u) = log(w) - ((w - 1) - u) / w``: ``w - 1`` is exact and ``(w - 1) - u`` is exactly the
    rounding error of ``w``, so this is as accurate as ``log1p`` (about one ulp) but costs a
    vectorised ``log``, where eager ``torch.log1p`` is a scalar loop on CPU, four times slower. Every
    CPU path uses it (under ``torch.compile`` too, where it measured slightly faster than inductor's
    vectorised ``log1p``); CUDA, whose ``log1p`` is fast, calls ``torch.log1p``.
    The scaled formulation needs no ``torch.where`` at all. The loss is ``u``'s buffer (``out[2]``),
    the gradient ``out[4]``'s. With ``scale_grad=False`` the scaled formulation's gradient is left
    divided by ``alpha`` (backward multiplies it in, saving a pass here); mmdet's is always whole.
    ``scalars`` (the blocks path) gives the constants as 0-dim tensors, which the CPU kernels take
    without wrapping a Python number on every call.
    """
    o: tuple[Tensor | None, ...] = out if out is not None else (None,) * 6
    d = torch.sub(pred, target, out=o[0])
    a = torch.abs(d, out=o[1])
    mask = torch.lt(a, c.threshold) if c.jump != 0.0 else None
    u = torch.clamp_max(a, c.beta, out=o[2])
    excess = a.sub_(u)
    one, k, neg_c1 = (1.0, c.k, -c.c1) if scalars is None else scalars
    if c.k:
        u.mul_(k)
    else:  # tiny beta: b / beta itself would overflow the dtype
        u.div_(c.beta).mul_(c.b)
    w = torch.add(u, one, out=o[3])
    rounding = o[5]
    if d.device.type == "cpu":  # the blocks path (scalars given) is CPU-only
        log_u = torch.log(w, out=o[4])
        rounding = torch.sub(w, one, out=rounding).sub_(u)
        log_u.addcdiv_(rounding, w, value=-1.0)
    else:  # CUDA's log1p is fast
        log_u = torch.log1p(u, out=o[4])
    if mask is not None:  # mmdet with beta != 1: the extra inlier term of its gradient, maybe negative
        extra = torch.reciprocal(w, out=rounding).mul_(c.jump).mul_(mask)
        w = torch.add(u, c.q, out=w)
    # u - w log1p(u) first, as one rounding: exactly 0 where u is below an ulp of 1 (w = 1, log_u = u)
    loss = u.addcmul_(w, log_u, value=-1.0).mul_(neg_c1).add_(excess, alpha=c.gamma)
    if mask is not None:
        grad = log_u.mul_(c.alpha).add_(extra).mul_(torch.sign(d, out=d))
    elif scale_grad:
        grad = log_u.mul_(c.alpha).copysign_(d)
    else:  # the magnitude is >= 0, so copying the sign is one cheap pass
        grad = log_u.copysign_(d)
    return loss, grad


def _loss_and_grad(
    pred: Tensor, target: Tensor, c: _Constants, reduce_sum: bool, blocks: bool
) -> tuple[Tensor, Tensor]:
    """Loss (element-wise, or its sum with ``reduce_sum``) and gradient; block by block with ``blocks``.

    In blocks (the eager CPU path for large inputs) the temporaries are five block-sized buffers that
    stay in cache and serve every block; only the gradient (and the element-wise loss for
    ``reduction="none"``) is a full-sized buffer, written once. There the scaled formulation's
    gradient is returned divided by ``alpha`` (:func:`_grad_scale`). Otherwise :func:`_fill` runs on
    the whole tensors (``torch.compile`` fuses it into one kernel; on CUDA it runs at memory speed).
    """
    if not blocks:
        loss, grad = _fill(pred, target, c)
        return (loss.sum() if reduce_sum else loss), grad
    grad = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    elementwise = None if reduce_sum else torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    scratch = [torch.empty(_BLOCK, dtype=pred.dtype, device=pred.device) for _ in range(5)]
    scalars = _Scalars(*(torch.tensor(v, dtype=pred.dtype) for v in (1.0, c.k, -c.c1)))
    grad_blocks = grad.view(-1).split(_BLOCK)
    pieces = zip(
        pred.reshape(-1).split(_BLOCK),
        target.reshape(-1).split(_BLOCK),
        grad_blocks,
        [None] * len(grad_blocks) if elementwise is None else elementwise.view(-1).split(_BLOCK),
        strict=True,
    )
    sums = []
    for block_pred, block_target, block_grad, block_loss in pieces:
        size = block_pred.numel()
        d, a, u, w, r = scratch if size == _BLOCK else [buffer[:size] for buffer in scratch]
        buffers = (d, a, u if block_loss is None else block_loss, w, block_grad, r)
        loss, _ = _fill(block_pred, block_target, c, buffers, False, scalars)
        if elementwise is None:
            sums.append(loss.sum())
    return (torch.stack(sums).sum() if elementwise is None else elementwise), grad


def _grad_scale(c: _Constants, blocks: bool) -> float:
    """What backward multiplies the saved gradient by: ``alpha`` where :func:`_loss_and_grad` left it out."""
    return c.alpha if blocks and c.jump == 0.0 else 1.0


def _input_grads(ctx: Any, grad_loss: Tensor | None) -> tuple[Tensor | None, ...]:
    """Backward of both Functions: ``grad_loss * dL/dx`` for ``pred`` and its negative for ``target``.

    The gradient of the second (gradient) output is ignored: that output is differentiable only so
    that, with ``create_graph=True``, a second derivative reaches :class:`_FirstOrderOnly` and raises.
    """
    (grad,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 5
    scale = ctx.grad_scale
    if scale == 1.0:
        grad_pred = grad_loss * grad
    else:  # the blocks path (CPU) saved dL/dx / alpha; fold alpha into a scalar grad_loss where it stays finite
        factor = grad_loss * scale
        if factor.dim() == 0 and bool(torch.isfinite(factor)):
            grad_pred = grad * factor
        else:
            grad_pred = (grad_loss * grad).mul_(scale)
    if torch.is_grad_enabled():  # create_graph=True: make a later differentiation fail loudly
        grad_pred = _FirstOrderOnly.apply(grad_pred, grad)
    grad_target = -grad_pred if ctx.needs_input_grad[1] else None
    return (grad_pred if ctx.needs_input_grad[0] else None, grad_target, None, None, None)


class _BalancedL1Function(torch.autograd.Function):
    """Autograd for eager mode and ``torch.compile`` (one fused kernel each way there).

    The classic ``forward(ctx, ...)`` form: its ``apply`` is about 30 us cheaper per call than the
    ``setup_context`` form, whose ``apply`` binds the arguments through ``inspect.signature``.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> tuple[Tensor, Tensor]:
        loss, grad = _loss_and_grad(*args)
        ctx.save_for_backward(grad)
        ctx.grad_scale = _grad_scale(args[2], args[4])
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
        ctx.grad_scale = _grad_scale(inputs[2], inputs[4])
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


#: The dtypes a ``weight`` may have besides the floating ones: real numbers that promote to the loss's dtype.
_WEIGHT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_layout(name: str, value: Tensor) -> None:
    """Refuse sparse and nested tensors, which the element-wise kernels cannot take, naming the layout."""
    if value.is_nested:
        raise TypeError(
            f"{name} must be a dense tensor (layout torch.strided, not nested), got a nested tensor of layout "
            f"{value.layout}; pad it into a dense tensor (torch.nested.to_padded_tensor) or concatenate its components"
        )
    if value.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense tensor (layout torch.strided), got layout {value.layout}; "
            "convert it with .to_dense()"
        )


def _check_tensors(pred: object, target: object, weight: object) -> None:
    for name, value in (("pred", pred), ("target", target)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        _check_layout(name, value)
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
    _check_layout("weight", weight)
    if not (weight.is_floating_point() or weight.dtype in _WEIGHT_DTYPES):
        why = " (a complex weight would make the loss complex)" if weight.is_complex() else ""
        raise TypeError(f"weight must be a real tensor (floating, integer or bool), got {weight.dtype}{why}")
    try:
        broadcast = torch.broadcast_shapes(weight.shape, pred.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != pred.shape:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} is not broadcastable to pred's shape {tuple(pred.shape)}"
        )


def _check_avg_factor_tensor(avg_factor: object, pred: Tensor) -> None:
    if avg_factor is None or isinstance(avg_factor, float):
        return
    if not isinstance(avg_factor, Tensor):
        raise TypeError(
            "avg_factor must be a number, a 0-dim tensor or None, "
            f"got {avg_factor!r} of type {type(avg_factor).__name__}"
        )
    if avg_factor.dim() != 0:
        raise ValueError(
            f"avg_factor must be a number or a 0-dim tensor, got a tensor of shape {tuple(avg_factor.shape)}"
        )
    if avg_factor.dtype == torch.bool or avg_factor.is_complex():
        raise TypeError(f"avg_factor must be a real (integer or floating) tensor, got {avg_factor.dtype}")
    if avg_factor.device != pred.device and avg_factor.device.type != "cpu":
        raise ValueError(
            f"avg_factor is on {avg_factor.device} but pred is on {pred.device}; put it on pred's device "
            "(a CPU 0-dim tensor is also accepted, as torch accepts one for a scalar)"
        )


def _compute_dtype(pred: Tensor, target: Tensor) -> torch.dtype:
    dtype = torch.promote_types(pred.dtype, target.dtype)
    return getattr(torch, compute_dtype_name(str(dtype).removeprefix("torch.")))


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
    inputs give finite gradients in every dtype and never a NaN; the loss is finite while it fits the
    computation dtype (an element's loss grows as ``gamma * |x|``: ``|x|`` above about
    ``finfo.max / gamma``, or a sum of losses above ``finfo.max`` under ``"mean"``/``"sum"``, gives
    ``inf``). float16/bfloat16 inputs are computed and returned in float32 (the gradient has
    ``pred``'s dtype). For ``|x|`` far below ``beta`` the
    loss value (about :math:`\alpha b x^2 / 2\beta`) is the difference of two terms of size
    :math:`\alpha |x|`, so its absolute error is about machine epsilon times :math:`\alpha |x|`; the
    gradient has no such cancellation. Second derivatives are not supported and raise an error.

    Args:
        pred: predicted regression targets, a floating tensor of any shape.
        target: regression targets, of the same shape as ``pred`` (no broadcasting).
        alpha: inlier gradient scale, finite and > 0.
        gamma: outlier gradient (cap), finite and > 0.
        beta: inflection point, finite and > 0 (Libra RetinaNet uses 0.11).
        weight: optional real tensor (floating, integer or bool) broadcastable to ``pred``'s shape;
            multiplies the element-wise loss. ``pred``, ``target`` and ``weight`` must be dense
            (strided) tensors: sparse and nested ones raise ``TypeError``.
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
    check_reduction(reduction)
    avg_factor = check_avg_factor(avg_factor, reduction)  # type: ignore[assignment]
    _check_tensors(pred, target, weight)
    _check_avg_factor_tensor(avg_factor, pred)
    dtype = _compute_dtype(pred, target)
    compiling = torch.compiler.is_compiling()
    constants = (_constants if compiling else _cached_constants)(alpha, gamma, beta, formulation, dtype, pred.dtype)

    reduce_sum = reduction != "none" and weight is None
    if compiling or not torch._C._are_functorch_transforms_active():
        function: type[torch.autograd.Function] = _BalancedL1Function
        blocks = not compiling and pred.device.type == "cpu" and pred.numel() >= 2 * _BLOCK
    else:
        function, blocks = _BalancedL1TransformFunction, False
    loss, _ = function.apply(pred.to(dtype), target.to(dtype), constants, reduce_sum, blocks)
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
