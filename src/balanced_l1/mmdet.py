"""An mmdetection plugin: Balanced L1 as ``type="balanced_l1.BalancedL1Loss"`` in mmdetection configs.

mmdetection (3.x) builds its losses by name from its ``MODELS`` registry. Importing this module
registers :class:`BalancedL1Loss` in a registry of its own, scope ``"balanced_l1"``, a child of
mmdetection's ``MODELS``. mmengine resolves a scoped name such as ``"balanced_l1.BalancedL1Loss"``
through that child, the convention OpenMMLab projects use to reference each other's components, so a
config only needs::

    custom_imports = dict(imports=["balanced_l1.mmdet"], allow_failed_imports=False)
    model = dict(
        roi_head=dict(
            bbox_head=dict(
                loss_bbox=dict(type="balanced_l1.BalancedL1Loss", alpha=0.5, gamma=1.5, beta=1.0, loss_weight=1.0)
            )
        )
    )

mmdetection's own ``BalancedL1Loss`` (scope ``"mmdet"``) keeps its name: the two never clash (a
second registration of one name in one registry raises a ``KeyError``). ``formulation="scaled"`` is
the default; ``formulation="mmdet"`` computes exactly what mmdetection's loss computes (the two
agree for ``beta = 1``). Requires the ``mmdet`` extra; version 0.1.0 is not on a package index, so
install it from a clone of the repository: ``pip install -e '.[mmdet]'``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from balanced_l1.modules import BalancedL1Loss as _TorchBalancedL1Loss

try:
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.registry import Registry
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"balanced_l1.mmdet needs mmdetection 3.x and mmengine ({error}); "
        "install them in a clone of the balanced-l1 repository with: pip install -e '.[mmdet]' "
        "(version 0.1.0 is not on a package index)"
    ) from error

__all__ = ["MODELS", "SCOPE", "BalancedL1Loss"]

#: The mmengine scope of this package's components: configs name them ``"balanced_l1.<Name>"``.
SCOPE = "balanced_l1"

#: The registry of this package's mmdetection components, a child of mmdetection's ``MODELS``.
MODELS = Registry("model", parent=MMDET_MODELS, scope=SCOPE)


@MODELS.register_module(name="BalancedL1Loss")
class BalancedL1Loss(_TorchBalancedL1Loss):
    """:class:`balanced_l1.BalancedL1Loss` with the call signature of mmdetection's losses.

    Built by mmdetection from ``dict(type="balanced_l1.BalancedL1Loss", ...)``; the arguments are
    those of :class:`balanced_l1.BalancedL1Loss` (``alpha``, ``gamma``, ``beta``, ``reduction``,
    ``loss_weight``, ``formulation``), validated when the config is built.

    Example:
        >>> import torch
        >>> loss = MODELS.build(dict(type="BalancedL1Loss", beta=1.0, loss_weight=2.0))
        >>> pred, target, weight = torch.zeros(2, 4), torch.ones(2, 4), torch.ones(2, 4)
        >>> float(loss(pred, target, weight, avg_factor=2, reduction_override=None))
        8.6287...
    """

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Compute the loss as mmdetection's heads call it.

        Args:
            pred: predicted deltas, e.g. ``(num_positives, 4)``.
            target: encoded target deltas, the same shape.
            weight: element weights, broadcastable to ``pred`` (mmdetection's ``bbox_weights``).
            avg_factor: with ``"mean"``, the loss is ``sum / (avg_factor + eps)``.
            reduction_override: ``None`` (use ``reduction``), ``"none"``, ``"mean"`` or ``"sum"``.
            **kwargs: further keyword arguments some mmdetection heads pass; accepted and ignored.

        Returns:
            ``loss_weight`` times the reduced loss.
        """
        return super().forward(pred, target, weight, avg_factor, reduction_override)
