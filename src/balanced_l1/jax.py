"""Balanced L1 loss for JAX: the one place the JAX formula lives.

The contract is the PyTorch one (:func:`balanced_l1.balanced_l1_loss`): same arguments, same
reductions, same errors. Everything is ``jax.numpy``, so the function works under ``jax.jit``,
``jax.grad`` and ``jax.vmap``; the parameters (``alpha``, ``gamma``, ``beta``, ``reduction``,
``formulation``) are Python values, static under ``jax.jit``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from balanced_l1.params import (
    AVG_FACTOR_EPS,
    BalancedL1Params,
    DtypeRange,
    check_avg_factor,
    check_reduction,
    compute_dtype_name,
    inlier_threshold,
)

__all__ = ["balanced_l1_loss"]


class _Coefficients(NamedTuple):
    """The loss's constants, passed to the compiled computation as (weakly typed) scalars.

    Traced rather than static, so that new values of ``alpha``, ``gamma`` or ``beta`` reuse the
    compiled code; they are computed here in double precision, as the PyTorch backend does.
    """

    scale: float  # b / beta
    b: float
    beta: float
    c1: float  # alpha * beta / b
    q: float
    gamma: float
    alpha: float
    jump: float  # alpha * (q - 1): mmdet's extra inlier gradient at u = 0, 0 for scaled
    threshold: float  # beta rounded up to the dtype: a < threshold there is exactly a < beta

    @classmethod
    def of(cls, p: BalancedL1Params, dtype: jnp.dtype) -> _Coefficients:
        info = jnp.finfo(dtype)
        threshold = inlier_threshold(p.beta, info.nmant + 1, math.frexp(float(info.smallest_subnormal))[1] - 1)
        return cls(
            p.b / p.beta, p.b, p.beta, p.alpha * p.beta / p.b, p.q, p.gamma, p.alpha, p.alpha * (p.q - 1.0), threshold
        )


def _dtype_range(dtype: jnp.dtype) -> DtypeRange:
    return DtypeRange.of(jnp.dtype(dtype).name, jnp.finfo(dtype))


def _inlier_coordinate(a: jax.Array, c: _Coefficients) -> jax.Array:
    """``u = min(|x| * b / beta, b)``: bounded by ``b``, so nothing downstream can overflow."""
    return jnp.minimum(a * c.scale, c.b)


@jax.custom_jvp
def _elementwise_loss(x: jax.Array, c: _Coefficients) -> jax.Array:
    """Element-wise loss of ``x = pred - target``, branch-free.

    ``L = alpha * beta / b * ((u + q) * log1p(u) - u) + gamma * max(|x| - beta, 0)``.
    """
    a = jnp.abs(x)
    u = _inlier_coordinate(a, c)
    return c.c1 * ((u + c.q) * jnp.log1p(u) - u) + c.gamma * jnp.maximum(a - c.beta, 0.0)


@_elementwise_loss.defjvp
def _elementwise_loss_jvp(
    primals: tuple[jax.Array, _Coefficients], tangents: tuple[jax.Array, _Coefficients]
) -> tuple[jax.Array, jax.Array]:
    """``dL/dx = sign(x) * (alpha * log1p(u) + [|x| < beta] * alpha * (q - 1) / (1 + u))``.

    At ``|x| = beta`` this is the outlier side (``gamma``), at ``x = 0`` it is 0 (``sign(0) = 0``);
    the test ``|x| < beta`` is exact (``beta`` rounded up to the dtype, see ``inlier_threshold``),
    as in :func:`balanced_l1.reference.balanced_l1_grad`. Written out rather than left to autodiff,
    which differentiates ``abs`` to 1 at 0 and splits the ``minimum``/``maximum`` ties at the kink
    in two. The coefficients are constants: their tangents are ignored.
    """
    x, c = primals
    x_dot = tangents[0]
    a = jnp.abs(x)
    u = _inlier_coordinate(a, c)
    magnitude = c.alpha * jnp.log1p(u) + jnp.where(a < c.threshold, c.jump / (1.0 + u), 0.0)
    return _elementwise_loss(x, c), jnp.sign(x) * magnitude * x_dot


def _check_array(name: str, value: object) -> jax.Array | np.ndarray:
    if not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must be a jax.Array or numpy.ndarray, got {type(value).__name__}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array (float16, bfloat16, float32, float64), got {value.dtype}")
    return value


def _check_inputs(pred: object, target: object, weight: object) -> None:
    pred_shape, target_shape = _check_array("pred", pred).shape, _check_array("target", target).shape
    if pred_shape != target_shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {pred_shape} and target "
            f"{target_shape} (no broadcasting: expand explicitly if that is what you mean)"
        )
    if weight is None:
        return
    if not isinstance(weight, (jax.Array, np.ndarray)):
        raise TypeError(f"weight must be a jax.Array, numpy.ndarray or None, got {type(weight).__name__}")
    if not any(jnp.issubdtype(weight.dtype, kind) for kind in (jnp.floating, jnp.integer, jnp.bool_)):
        complex_weight = jnp.issubdtype(weight.dtype, jnp.complexfloating)
        why = " (a complex weight would make the loss complex)" if complex_weight else ""
        raise TypeError(f"weight must be a real array (floating, integer or bool), got {weight.dtype}{why}")
    try:
        broadcast: tuple[int, ...] | None = jnp.broadcast_shapes(weight.shape, pred_shape)
    except ValueError:
        broadcast = None
    if broadcast != pred_shape:
        raise ValueError(f"weight of shape {weight.shape} is not broadcastable to pred's shape {pred_shape}")


def _check_avg_factor_array(avg_factor: object) -> None:
    if avg_factor is None or isinstance(avg_factor, float):
        return
    if not isinstance(avg_factor, (jax.Array, np.ndarray)):
        raise TypeError(
            "avg_factor must be a number, a 0-dim array or None, "
            f"got {avg_factor!r} of type {type(avg_factor).__name__}"
        )
    if not (jnp.issubdtype(avg_factor.dtype, jnp.floating) or jnp.issubdtype(avg_factor.dtype, jnp.integer)):
        raise TypeError(f"avg_factor must be a real (integer or floating) array, got {avg_factor.dtype}")
    if avg_factor.ndim != 0:
        raise ValueError(f"avg_factor must be a number or a 0-dim array, got an array of shape {avg_factor.shape}")


def _compute_dtype(pred: jax.Array | np.ndarray, target: jax.Array | np.ndarray) -> jnp.dtype:
    dtype = jnp.promote_types(pred.dtype, target.dtype)
    return jnp.dtype(compute_dtype_name(dtype.name))


def balanced_l1_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    weight: jax.Array | None = None,
    reduction: str = "mean",
    avg_factor: float | jax.Array | None = None,
    formulation: str = "scaled",
) -> jax.Array:
    r"""Balanced L1 loss of Libra R-CNN (Pang et al., CVPR 2019, arXiv:1904.02701), in JAX.

    With :math:`a = |x|`, :math:`x = \text{pred} - \text{target}` and :math:`b = e^{\gamma/\alpha} - 1`,
    the default ``"scaled"`` formulation is :math:`L_\beta(x) = \beta L_1(x / \beta)`:

    .. math::

        L(x) = \begin{cases}
            \frac{\alpha}{b}(b a + \beta)\ln\!\left(1 + \frac{b a}{\beta}\right) - \alpha a & a < \beta \\
            \gamma a + \left(\frac{\gamma}{b} - \alpha\right)\beta & \text{otherwise}
        \end{cases}

    ``"mmdet"`` is mmdetection's expression (identical at ``beta = 1``; see
    :func:`balanced_l1.balanced_l1_loss` for how it differs elsewhere).

    Numerical notes: the loss is computed branch-free from ``u = min(|x| b / beta, b)``, so no
    intermediate can overflow and finite inputs give finite gradients in every dtype; the loss is
    finite while it fits the computation dtype (``|x|`` above about ``finfo.max / gamma``, or a sum of
    losses above ``finfo.max``, gives ``inf``). float16/bfloat16 inputs are computed and returned in
    float32; the gradient has ``pred``'s dtype. The derivative is a ``jax.custom_jvp``: 0 at ``x = 0``
    and ``gamma`` (the outlier side) at ``|x| = beta``, exactly as :mod:`balanced_l1.reference`. NaN
    inputs propagate.

    Under ``jax.jit`` pass the parameters as static arguments (or close over them); the
    checks below read only shapes and dtypes, never array values, so they run at trace time.

    Args:
        pred: predicted regression targets, a floating ``jax.Array`` (or NumPy array) of any shape.
        target: regression targets, of the same shape as ``pred`` (no broadcasting).
        alpha: inlier gradient scale, finite and > 0.
        gamma: outlier gradient (cap), finite and > 0.
        beta: inflection point, finite and > 0 (Libra RetinaNet uses 0.11).
        weight: optional real array (floating, integer or bool) broadcastable to ``pred``'s shape; multiplies
            the element-wise loss.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, divide the (weighted) sum by ``avg_factor + eps`` instead of the
            number of elements (as mmdetection does). A number or a 0-dim array (may be traced).
            Not allowed with ``"sum"``; ignored with ``"none"``.
        formulation: ``"scaled"`` (default) or ``"mmdet"``.

    Returns:
        The loss: a scalar for ``"mean"``/``"sum"``, ``pred``'s shape for ``"none"``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from balanced_l1.jax import balanced_l1_loss
        >>> pred = jnp.array([0.05, 0.5, -3.0])
        >>> jax.grad(lambda p: balanced_l1_loss(p, jnp.zeros(3), reduction="sum"))(pred)
        Array([ 0.33501..., 1.17772..., -1.5...], dtype=float32)
    """
    params = BalancedL1Params(alpha, gamma, beta, formulation)
    check_reduction(reduction)
    avg_factor = check_avg_factor(avg_factor, reduction)  # type: ignore[assignment]
    _check_avg_factor_array(avg_factor)
    _check_inputs(pred, target, weight)
    dtype = jax.dtypes.canonicalize_dtype(_compute_dtype(pred, target))  # float32 unless x64 is enabled
    params.check_fits(_dtype_range(dtype), _dtype_range(jax.dtypes.canonicalize_dtype(pred.dtype)))
    return _balanced_l1(pred, target, weight, avg_factor, _Coefficients.of(params, dtype), reduction)


@partial(jax.jit, static_argnames=("reduction",))
def _balanced_l1(
    pred: jax.Array,
    target: jax.Array,
    weight: jax.Array | None,
    avg_factor: float | jax.Array | None,
    coefficients: _Coefficients,
    reduction: str,
) -> jax.Array:
    """The computation, compiled once per shapes, dtypes and reduction.

    Op-by-op dispatch measured 5x slower on a first call and 8x on later ones (CPU, 4000 elements).
    """
    dtype = _compute_dtype(pred, target)
    loss = _elementwise_loss(pred.astype(dtype) - target.astype(dtype), coefficients)
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    if avg_factor is not None:
        return total / (avg_factor + AVG_FACTOR_EPS)
    return total / loss.size if loss.size > 0 else total
