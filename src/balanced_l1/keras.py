"""Balanced L1 loss for Keras 3: the one place the Keras formula lives.

Written with ``keras.ops`` only, so it runs on every Keras 3 backend (JAX, PyTorch, TensorFlow).
Keras picks its backend when it is first imported, from the ``KERAS_BACKEND`` environment
variable or ``~/.keras/keras.json`` (default: TensorFlow); this module chooses nothing, so set
``KERAS_BACKEND`` before importing it if TensorFlow is not installed.

Keras conventions apply rather than the PyTorch ones: arguments are ``(y_true, y_pred)``, the
function returns the per-sample loss (the mean over the last axis, like ``keras.losses.huber``),
and the :class:`BalancedL1Loss` class reduces it with ``sample_weight`` and a Keras reduction.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import ml_dtypes
import numpy as np
from keras import ops

from balanced_l1.params import BalancedL1Params, DtypeRange, compute_dtype_name, inlier_threshold

__all__ = ["BalancedL1Loss", "balanced_l1_loss"]

_LOSS_PARAMETERS = ("alpha", "gamma", "beta", "formulation")


def _check_shapes(y_true: Any, y_pred: Any) -> None:
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    same = len(true_shape) == len(pred_shape) and all(
        t is None or p is None or t == p for t, p in zip(true_shape, pred_shape, strict=True)
    )
    if not same:
        raise ValueError(
            f"y_true and y_pred must have the same shape, got y_true {true_shape} and y_pred {pred_shape} "
            "(no broadcasting: reshape explicitly if that is what you mean)"
        )
    if not pred_shape:
        raise ValueError("y_pred must have at least one dimension (the loss is averaged over the last axis), got ()")


def _dtype_range(dtype: str) -> DtypeRange:
    return DtypeRange.of(dtype, ml_dtypes.finfo(dtype) if dtype == "bfloat16" else np.finfo(dtype))


def _elementwise_loss(diff: Any, params: BalancedL1Params) -> Any:
    """Element-wise loss of ``diff = y_pred - y_true`` whose autodiff gradient matches the reference.

    ``u = b / beta * min(|x|, beta)`` and the outlier excess ``|x| - beta`` are selected with
    ``ops.where`` on ``|x| < beta``, whose unused branch is finite (``beta`` or ``|x| - beta``), so
    the gradient is NaN-free and takes the outlier side (``gamma``) at ``|x| = beta``; the
    ``min``/``max`` of the PyTorch rewrite would split that tie in two (JAX and PyTorch do). ``|x|`` is
    ``x * sign(x)``, whose derivative is 0 at 0 on every backend (JAX's ``abs`` has 1 there).
    ``beta`` is made a tensor of ``diff``'s dtype first: some backends turn a Python float given to
    ``where`` or ``less`` into float32, which would cost float64 inputs their precision. The test
    ``|x| < beta`` is exact: it compares with ``beta`` rounded up to the dtype (``inlier_threshold``).
    """
    dtype = keras.backend.standardize_dtype(diff.dtype)
    info = np.finfo(dtype)
    threshold = inlier_threshold(params.beta, info.nmant + 1, math.frexp(float(info.smallest_subnormal))[1] - 1)
    beta = ops.convert_to_tensor(params.beta, dtype=diff.dtype)
    a = diff * ops.sign(diff)
    inlier = ops.less(a, ops.convert_to_tensor(threshold, dtype=diff.dtype))
    u = ops.where(inlier, a, beta) * (params.b / params.beta)
    excess = ops.where(inlier, ops.zeros_like(a), a - beta)
    log_term = ((u + params.q) * ops.log1p(u) - u) * (params.alpha * params.beta / params.b)
    return log_term + params.gamma * excess


@keras.saving.register_keras_serializable(package="balanced_l1")
def balanced_l1_loss(
    y_true: Any,
    y_pred: Any,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    formulation: str = "scaled",
) -> Any:
    """Per-sample Balanced L1 loss of Libra R-CNN (Pang et al., CVPR 2019), in Keras 3.

    ``loss = mean(L(y_pred - y_true), axis=-1)`` with ``L`` the element-wise Balanced L1 loss of
    :func:`balanced_l1.balanced_l1_loss` (``"scaled"`` or mmdetection's ``"mmdet"`` formulation).
    ``y_true`` is cast to the computation dtype, as Keras losses do. float16/bfloat16 are
    computed and returned in float32; a last axis of size 0 gives a loss of 0.

    Args:
        y_true: regression targets, of ``y_pred``'s shape.
        y_pred: predictions, a floating tensor with at least one dimension.
        alpha: inlier gradient scale, finite and > 0.
        gamma: outlier gradient (cap), finite and > 0.
        beta: inflection point, finite and > 0 (Libra RetinaNet uses 0.11).
        formulation: ``"scaled"`` (default) or ``"mmdet"``.

    Returns:
        The loss of each sample: ``y_pred``'s shape without its last axis.

    Example:
        >>> import numpy as np
        >>> from balanced_l1.keras import balanced_l1_loss
        >>> loss = balanced_l1_loss(np.zeros((1, 2)), np.array([[0.5, -3.0]], dtype="float32"))
        >>> np.asarray(loss).round(6)
        array([2.239581], dtype=float32)
    """
    params = BalancedL1Params(alpha, gamma, beta, formulation)
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise TypeError(f"y_pred must be a floating tensor (float16, bfloat16, float32, float64), got {dtype}")
    compute_dtype = compute_dtype_name(dtype)
    params.check_fits(_dtype_range(compute_dtype), _dtype_range(dtype))
    y_pred = ops.cast(y_pred, compute_dtype)
    y_true = ops.cast(ops.convert_to_tensor(y_true), compute_dtype)
    _check_shapes(y_true, y_pred)
    per_element = _elementwise_loss(y_pred - y_true, params)
    size = y_pred.shape[-1]
    if size is None:
        return ops.mean(per_element, axis=-1)
    return ops.sum(per_element, axis=-1) / max(size, 1)


@keras.saving.register_keras_serializable(package="balanced_l1")
class BalancedL1Loss(keras.losses.Loss):
    """Balanced L1 loss as a ``keras.losses.Loss``: per-sample :func:`balanced_l1_loss`, then reduced.

    Keras does the reduction, with its own rules: ``sample_weight`` multiplies the per-sample losses,
    and a batch of no samples is returned unreduced (an empty tensor), as for every Keras loss.

    Args:
        alpha: inlier gradient scale, finite and > 0.
        gamma: outlier gradient (cap), finite and > 0.
        beta: inflection point, finite and > 0.
        formulation: ``"scaled"`` (default) or ``"mmdet"``.
        reduction: a Keras reduction: ``"sum_over_batch_size"`` (default), ``"sum"``, ``"mean"``,
            ``"none"`` or ``None``, and whatever else the installed Keras accepts (Keras checks it).
        name: the loss's name.
        dtype: the dtype of the computation and of the result (Keras' default: ``floatx()``).

    ``alpha``, ``gamma``, ``beta`` and ``formulation`` are attributes; an assignment after construction
    is checked at once by the constructor's rules (``gamma / alpha <= 80`` included).

    Example:
        >>> import numpy as np
        >>> from balanced_l1.keras import BalancedL1Loss
        >>> loss = BalancedL1Loss(beta=0.11)
        >>> round(float(loss(np.zeros((2, 1)), np.array([[0.5], [0.05]]))), 6)
        0.370962
    """

    def __init__(
        self,
        alpha: float = 0.5,
        gamma: float = 1.5,
        beta: float = 1.0,
        formulation: str = "scaled",
        reduction: str | None = "sum_over_batch_size",
        name: str = "balanced_l1_loss",
        dtype: Any = None,
    ) -> None:
        params = BalancedL1Params(alpha, gamma, beta, formulation)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        # checked together above; __setattr__ checks each later assignment against the others
        self.__dict__.update(alpha=params.alpha, gamma=params.gamma, beta=params.beta, formulation=params.formulation)

    def __setattr__(self, name: str, value: Any) -> None:
        """Check ``alpha``, ``gamma``, ``beta`` or ``formulation`` assigned later by the constructor's rules."""
        if name in _LOSS_PARAMETERS:
            current = {key: self.__dict__[key] for key in _LOSS_PARAMETERS}
            value = getattr(BalancedL1Params(**{**current, name: value}), name)
        super().__setattr__(name, value)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-sample loss; ``keras.losses.Loss.__call__`` applies ``sample_weight`` and the reduction."""
        return balanced_l1_loss(
            y_true, y_pred, alpha=self.alpha, gamma=self.gamma, beta=self.beta, formulation=self.formulation
        )

    def get_config(self) -> dict[str, Any]:
        """Keras' config (``name``, ``reduction``) plus the loss's parameters."""
        config: dict[str, Any] = super().get_config()
        config.update(alpha=self.alpha, gamma=self.gamma, beta=self.beta, formulation=self.formulation)
        return config
