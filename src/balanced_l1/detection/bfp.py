"""The Balanced Feature Pyramid of Libra R-CNN (Pang et al., CVPR 2019, arXiv:1904.02701).

An FPN passes information between levels only along its top-down path, so each level mostly sees its
neighbours. The Balanced Feature Pyramid rescales every level to one intermediate size, averages them
(every level contributes equally), refines the average, and adds it back to every level as a residual.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn.functional import adaptive_max_pool2d, interpolate, max_pool2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from balanced_l1.params import check_choice, check_number

REFINE_TYPES = ("non_local", "non_local_mmdet", "conv", None)
POOL_LEVEL = "pool"


class _EmbeddedGaussianNonLocal(nn.Module):
    """Non-local block with embedded-Gaussian affinities (Wang et al., CVPR 2018), as a residual.

    ``out = x + W(softmax(theta(x)^T phi(x) * s) g(x))`` over all spatial positions, with 1x1
    convolutions ``theta``, ``phi``, ``g`` to ``d = max(channels // reduction, 1)`` channels and ``W``
    back. ``W`` starts at zero, so the block starts as the identity.

    * ``mmdet=False`` (ours): ``reduction=2`` and ``s = 1/sqrt(d)``, which keeps the softmax out of
      saturation at initialisation; ``theta``, ``phi``, ``g`` keep PyTorch's default initialisation.
    * ``mmdet=True``: mmcv's ``NonLocal2d(reduction=1, use_scale=False)`` as mmdetection's BFP builds it:
      full width, ``s = 1``, ``theta``, ``phi``, ``g`` weights drawn from N(0, 0.01^2), biases 0.
    """

    def __init__(self, channels: int, *, mmdet: bool = False) -> None:
        super().__init__()
        inner = channels if mmdet else max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        if mmdet:
            for conv in (self.g, self.theta, self.phi):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # Conv2d(bias=True) has a bias
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]  # Conv2d(bias=True) has a bias
        self.scale = 1.0 if mmdet else inner**-0.5

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)
        key = self.phi(x).flatten(2)
        value = self.g(x).flatten(2).transpose(1, 2)
        affinity = torch.bmm(query, key)
        if self.scale != 1.0:
            affinity = affinity * self.scale
        attention = torch.softmax(affinity, dim=-1)
        y = torch.bmm(attention, value).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.out(y)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive max-pool where ``x`` is larger than ``size``, nearest-neighbour upsampling otherwise."""
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return adaptive_max_pool2d(x, size)
    return interpolate(x, size=size, mode="nearest")


class BalancedFeaturePyramid(nn.Module):
    """Strengthen every pyramid level with the same balanced, refined semantic feature.

    Every level is rescaled to the size of level ``refine_level`` (adaptive max pooling for larger
    levels, nearest-neighbour upsampling for smaller ones), the results are averaged, refined, rescaled
    back to each level's own size the same way, and added to the level. Output shapes equal input
    shapes exactly, odd sizes included.

    Args:
        in_channels: channels of every level.
        num_levels: number of levels the input has, >= 1.
        refine_level: index of the level whose size the levels are balanced at, in ``[0, num_levels)``.
        refine_type: ``"non_local"`` (the default: an embedded-Gaussian non-local block, the paper's
            choice, at half width with a ``1/sqrt(d)`` attention scale as in Wang et al.'s non-local
            networks), ``"non_local_mmdet"`` (mmdetection's exact block: mmcv's ``NonLocal2d(reduction=1,
            use_scale=False)`` and its initialisation), ``"conv"`` (a 3x3 convolution) or ``None`` (no
            refinement). ``"non_local"`` stays the default: it costs half the 1x1 convolutions and
            attention width, and the scale keeps the softmax from saturating as features grow.

    Raises:
        TypeError: if ``in_channels``, ``num_levels`` or ``refine_level`` is not an integer (NumPy integers are).
        ValueError: if an argument is out of range or ``refine_type`` is unknown.

    Example:
        >>> from collections import OrderedDict
        >>> import torch
        >>> bfp = BalancedFeaturePyramid(8, num_levels=3, refine_level=1)
        >>> levels = OrderedDict((str(i), torch.randn(1, 8, 33 >> i, 17 >> i)) for i in range(3))
        >>> [tuple(v.shape) for v in bfp(levels).values()]
        [(1, 8, 33, 17), (1, 8, 16, 8), (1, 8, 8, 4)]
    """

    def __init__(self, in_channels: int, num_levels: int, refine_level: int = 2, refine_type: str | None = "non_local"):
        super().__init__()
        in_channels = check_number("in_channels", in_channels, minimum=1, integer=True)
        num_levels = check_number("num_levels", num_levels, minimum=1, integer=True)
        refine_level = check_number("refine_level", refine_level, integer=True)
        if not 0 <= refine_level < num_levels:
            raise ValueError(f"refine_level must be in [0, {num_levels}) (num_levels={num_levels}), got {refine_level}")
        check_choice("refine_type", refine_type, REFINE_TYPES)
        self.num_levels = num_levels
        self.refine_level = refine_level
        self.refine_type = refine_type
        self.refine: nn.Module
        if refine_type in ("non_local", "non_local_mmdet"):
            self.refine = _EmbeddedGaussianNonLocal(in_channels, mmdet=refine_type == "non_local_mmdet")
        elif refine_type == "conv":
            self.refine = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        else:
            self.refine = nn.Identity()

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Balance the levels.

        Args:
            features: ``num_levels`` tensors ``(N, C, H_i, W_i)``, finest level first, as an FPN returns.

        Returns:
            A new ``OrderedDict`` with the same keys and shapes: each level plus the refined balanced feature.

        Raises:
            ValueError: if the number of levels is not ``num_levels``.
        """
        if len(features) != self.num_levels:
            raise ValueError(
                f"expected {self.num_levels} feature levels, got {len(features)}: {list(features)}; "
                "build the BalancedFeaturePyramid with num_levels equal to the number of levels"
            )
        levels = list(features.values())
        size = (levels[self.refine_level].shape[-2], levels[self.refine_level].shape[-1])
        balanced = _resize(levels[0], size)
        for x in levels[1:]:
            balanced = balanced + _resize(x, size)
        balanced = self.refine(balanced / len(levels))
        return OrderedDict((name, x + _resize(balanced, (x.shape[-2], x.shape[-1]))) for name, x in features.items())


def _infer_num_levels(backbone: nn.Module, with_pool_level: bool) -> int:
    fpn = getattr(backbone, "fpn", None)
    if not isinstance(fpn, FeaturePyramidNetwork):
        raise TypeError(
            f"cannot infer the number of pyramid levels of a {type(backbone).__name__} without an `fpn` "
            "FeaturePyramidNetwork attribute; pass num_levels"
        )
    extra = fpn.extra_blocks
    if extra is None:
        return len(fpn.inner_blocks)
    if isinstance(extra, LastLevelMaxPool):
        return len(fpn.inner_blocks) + with_pool_level
    if isinstance(extra, LastLevelP6P7):
        return len(fpn.inner_blocks) + 2
    raise TypeError(
        f"cannot infer the number of levels added by FPN extra block {type(extra).__name__}; pass num_levels"
    )


class BackboneWithBFP(nn.Module):
    """Wrap a torchvision backbone-with-FPN so its pyramid goes through a Balanced Feature Pyramid.

    The ``"pool"`` level of torchvision's ``LastLevelMaxPool`` is a parameter-free stride-2 subsample of
    the last level, so it is not balanced as a level of its own (that would count the last level twice
    in the average); it is recomputed, the same way torchvision computes it, from the balanced last
    level. Every other level (including the convolutional ``"p6"``/``"p7"`` of ``LastLevelP6P7``) is
    balanced. With ``balance_pool_level=True`` the ``"pool"`` level is balanced like the others instead,
    as mmdetection's BFP balances its P6 (the same stride-2 subsample, made by its FPN with
    ``num_outs=5``). Shapes, key order and ``out_channels`` are unchanged, so it drops in as
    ``model.backbone = BackboneWithBFP(model.backbone)``.

    Args:
        backbone: module returning an ``OrderedDict`` of pyramid levels and having ``out_channels``.
        refine_level: see :class:`BalancedFeaturePyramid`; stride 16 is 2 for torchvision's R-CNN ResNet-FPN
            (P2-P5) and 1 for RetinaNet / FCOS (P3-P7).
        refine_type: see :class:`BalancedFeaturePyramid`.
        num_levels: number of balanced levels (``"pool"`` counted only with ``balance_pool_level``);
            ``None`` infers it from the backbone's torchvision ``fpn``.
        balance_pool_level: balance the ``"pool"`` level as a level of its own (mmdetection's way)
            instead of recomputing it from the balanced last level.

    Raises:
        TypeError: if ``backbone`` has no integer ``out_channels``, or ``num_levels`` is ``None`` and
            cannot be inferred.
        ValueError: if an argument is out of range (see :class:`BalancedFeaturePyramid`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        refine_level: int = 2,
        refine_type: str | None = "non_local",
        num_levels: int | None = None,
        balance_pool_level: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(balance_pool_level, bool):
            raise TypeError(f"balance_pool_level must be a bool, got {balance_pool_level!r}")
        out_channels = getattr(backbone, "out_channels", None)
        if not isinstance(out_channels, int):
            raise TypeError(
                f"backbone must have an int `out_channels`, got {out_channels!r} on {type(backbone).__name__}"
            )
        self.backbone = backbone
        self.out_channels = out_channels
        self.balance_pool_level = balance_pool_level
        levels = _infer_num_levels(backbone, balance_pool_level) if num_levels is None else num_levels
        self.bfp = BalancedFeaturePyramid(out_channels, levels, refine_level, refine_type)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Run the backbone, then balance its levels.

        Args:
            x: images ``(N, 3, H, W)``.

        Returns:
            The backbone's levels, balanced, under the same keys in the same order.
        """
        features = self.backbone(x)
        if self.balance_pool_level:
            return self.bfp(features)
        levels = OrderedDict((name, level) for name, level in features.items() if name != POOL_LEVEL)
        out = self.bfp(levels)
        if POOL_LEVEL in features:
            last = next(reversed(out.values()))
            out[POOL_LEVEL] = max_pool2d(last, kernel_size=1, stride=2, padding=0)
        return out


def use_balanced_feature_pyramid(
    model: nn.Module,
    *,
    refine_level: int = 2,
    refine_type: str | None = "non_local",
    num_levels: int | None = None,
    balance_pool_level: bool = False,
) -> nn.Module:
    """Put a Balanced Feature Pyramid on a torchvision detector's FPN backbone, in place.

    ``model.backbone`` becomes ``BackboneWithBFP(model.backbone, ...)``; nothing else changes.

    Args:
        model: a torchvision detector whose ``backbone`` returns FPN levels (Faster / Mask / Keypoint
            R-CNN, RetinaNet, FCOS).
        refine_level: see :class:`BalancedFeaturePyramid`; stride 16 is 2 for torchvision's R-CNN ResNet-FPN
            (P2-P5) and 1 for RetinaNet / FCOS (P3-P7).
        refine_type: see :class:`BalancedFeaturePyramid`.
        num_levels: see :class:`BackboneWithBFP`.
        balance_pool_level: see :class:`BackboneWithBFP`.

    Returns:
        ``model`` itself, modified.

    Raises:
        TypeError: if ``model.backbone`` is missing or not a module, or its levels cannot be counted.
        ValueError: if the backbone already has a Balanced Feature Pyramid, or an argument is out of range.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"model.backbone must be an FPN backbone module, got {type(backbone).__name__}")
    if isinstance(backbone, BackboneWithBFP):
        raise ValueError("model.backbone is already a BackboneWithBFP; add the Balanced Feature Pyramid once per model")
    model.backbone = BackboneWithBFP(
        backbone,
        refine_level=refine_level,
        refine_type=refine_type,
        num_levels=num_levels,
        balance_pool_level=balance_pool_level,
    )
    return model
