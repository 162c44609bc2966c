"""The Balanced Feature Pyramid and its backbone wrapper."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from balanced_l1.detection import BackboneWithBFP, BalancedFeaturePyramid, use_balanced_feature_pyramid

REFINE_TYPES = ["non_local", "conv", None]


def _levels(sizes: list[tuple[int, int]], channels: int = 4, grad: bool = False) -> OrderedDict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return OrderedDict(
        (str(i), torch.randn(2, channels, h, w, generator=g).requires_grad_(grad)) for i, (h, w) in enumerate(sizes)
    )


ODD_SIZES = [(37, 25), (19, 13), (10, 7), (5, 4)]


@pytest.mark.parametrize("refine_type", REFINE_TYPES)
@pytest.mark.parametrize("refine_level", [0, 2, 3])
def test_output_shapes_equal_input_shapes_for_odd_sizes(refine_type: str | None, refine_level: int) -> None:
    bfp = BalancedFeaturePyramid(4, num_levels=4, refine_level=refine_level, refine_type=refine_type)
    features = _levels(ODD_SIZES)
    out = bfp(features)
    assert list(out) == list(features)
    assert [v.shape for v in out.values()] == [v.shape for v in features.values()]


@pytest.mark.parametrize("refine_type", REFINE_TYPES)
def test_every_input_level_gets_a_gradient_from_one_output_level(refine_type: str | None) -> None:
    features = _levels(ODD_SIZES, grad=True)
    out = BalancedFeaturePyramid(4, num_levels=4, refine_type=refine_type)(features)
    out["0"].sum().backward()
    for name, level in features.items():
        assert level.grad is not None and level.grad.abs().sum() > 0, name


@pytest.mark.parametrize("refine_type", ["non_local", "conv"])
def test_the_refinement_is_trained(refine_type: str) -> None:
    bfp = BalancedFeaturePyramid(4, num_levels=4, refine_type=refine_type)
    sum(v.square().sum() for v in bfp(_levels(ODD_SIZES)).values()).backward()
    last = list(bfp.refine.parameters())[-2]  # the weight of the last convolution
    assert last.grad is not None and last.grad.abs().sum() > 0


def test_without_refinement_each_level_adds_the_rescaled_mean_of_all_levels() -> None:
    features = _levels([(4, 4), (2, 2), (1, 1)], channels=1)
    l0, l1, l2 = features.values()
    pooled = l0.reshape(2, 1, 2, 2, 2, 2).amax(dim=(3, 5))  # 2x2 max pool to the middle size
    mean = (pooled + l1 + l2.expand(-1, -1, 2, 2)) / 3
    out = BalancedFeaturePyramid(1, num_levels=3, refine_level=1, refine_type=None)(features)
    torch.testing.assert_close(out["1"], l1 + mean)
    torch.testing.assert_close(out["0"], l0 + mean.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    torch.testing.assert_close(out["2"], l2 + mean.amax(dim=(2, 3), keepdim=True))


def test_the_non_local_refinement_starts_as_the_identity() -> None:
    features = _levels(ODD_SIZES)
    non_local = BalancedFeaturePyramid(4, num_levels=4, refine_type="non_local")(features)
    plain = BalancedFeaturePyramid(4, num_levels=4, refine_type=None)(features)
    for name in features:
        torch.testing.assert_close(non_local[name], plain[name])


def test_the_non_local_refinement_attends_over_all_positions() -> None:
    bfp = BalancedFeaturePyramid(4, num_levels=1, refine_level=0, refine_type="non_local")
    nn.init.normal_(bfp.refine.out.weight)
    x = torch.zeros(1, 4, 5, 5, requires_grad=True)
    out = bfp(OrderedDict(only=x))["only"]
    out[0, :, 0, 0].sum().backward()
    assert x.grad is not None and x.grad[0, :, 4, 4].abs().sum() > 0  # the far corner reaches (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"refine_level": 4}, ValueError, r"refine_level must be in \[0, 4\) \(num_levels=4\), got 4"),
        ({"refine_level": -1}, ValueError, r"refine_level must be in \[0, 4\) \(num_levels=4\), got -1"),
        ({"refine_type": "gaussian"}, ValueError, r"refine_type must be one of .*non_local.*got 'gaussian'"),
        ({"num_levels": 0}, ValueError, r"num_levels must be an integer >= 1, got 0"),
        ({"in_channels": 0}, ValueError, r"in_channels must be an integer >= 1, got 0"),
        ({"in_channels": 4.0}, TypeError, r"in_channels must be an integer, got 4.0 of type float"),
        ({"num_levels": True}, TypeError, r"num_levels must be an integer, got True of type bool"),
        ({"refine_level": "1"}, TypeError, r"refine_level must be an integer, got '1' of type str"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    args: dict[str, object] = {"in_channels": 4, "num_levels": 4, **kwargs}
    with pytest.raises(error, match=message):
        BalancedFeaturePyramid(**args)  # type: ignore[arg-type]


def test_numpy_integers_are_accepted_as_python_ints() -> None:
    bfp = BalancedFeaturePyramid(np.int64(4), np.int32(3), np.int64(1), "conv")  # type: ignore[arg-type]
    assert (bfp.num_levels, bfp.refine_level) == (3, 1) and type(bfp.refine_level) is int


def test_a_wrong_number_of_levels_is_rejected() -> None:
    bfp = BalancedFeaturePyramid(4, num_levels=3)
    with pytest.raises(ValueError, match=r"expected 3 feature levels, got 4: \['0', '1', '2', '3'\]"):
        bfp(_levels(ODD_SIZES))


# --- wrapping a torchvision backbone -------------------------------------------------------------


def _backbone(extra_blocks: ExtraFPNBlock | None = None) -> BackboneWithFPN:
    body = nn.Sequential()
    body.add_module("a", nn.Conv2d(3, 4, 3, stride=2, padding=1))
    body.add_module("b", nn.Conv2d(4, 6, 3, stride=2, padding=1))
    body.add_module("c", nn.Conv2d(6, 8, 3, stride=2, padding=1))
    return BackboneWithFPN(body, {"a": "0", "b": "1", "c": "2"}, [4, 6, 8], 8, extra_blocks=extra_blocks)


def test_the_wrapper_keeps_keys_shapes_and_out_channels() -> None:
    backbone = _backbone()
    images = torch.randn(1, 3, 45, 33)
    wrapped = BackboneWithBFP(backbone, refine_level=1, refine_type="conv")
    before, after = backbone(images), wrapped(images)
    assert wrapped.out_channels == 8
    assert list(after) == ["0", "1", "2", "pool"]
    assert [v.shape for v in after.values()] == [v.shape for v in before.values()]


def test_the_pool_level_is_recomputed_from_the_balanced_last_level() -> None:
    wrapped = BackboneWithBFP(_backbone(), refine_level=1)
    out = wrapped(torch.randn(1, 3, 45, 33))
    assert wrapped.bfp.num_levels == 3
    torch.testing.assert_close(out["pool"], out["2"][:, :, ::2, ::2])


def test_retinanet_style_p6_p7_levels_are_balanced() -> None:
    wrapped = BackboneWithBFP(_backbone(LastLevelP6P7(8, 8)), refine_level=1)
    out = wrapped(torch.randn(1, 3, 64, 64))
    assert wrapped.bfp.num_levels == 5
    assert list(out) == ["0", "1", "2", "p6", "p7"]


def test_refine_level_out_of_range_for_the_backbone_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"refine_level must be in \[0, 3\) \(num_levels=3\), got 3"):
        BackboneWithBFP(_backbone(), refine_level=3)


def test_a_backbone_without_fpn_needs_num_levels() -> None:
    plain = _backbone().body
    plain.out_channels = 8
    with pytest.raises(TypeError, match=r"cannot infer the number of pyramid levels of a IntermediateLayerGetter"):
        BackboneWithBFP(plain)
    assert BackboneWithBFP(plain, num_levels=3, refine_level=0).bfp.num_levels == 3


def test_a_backbone_without_out_channels_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"backbone must have an int `out_channels`, got None on Sequential"):
        BackboneWithBFP(nn.Sequential())


def _detector_like() -> nn.Module:
    model = nn.Module()
    model.backbone = _backbone()
    return model


def test_use_balanced_feature_pyramid_wraps_the_models_backbone() -> None:
    model = _detector_like()
    fpn = model.backbone
    use_balanced_feature_pyramid(model, refine_level=0, refine_type=None)
    assert isinstance(model.backbone, BackboneWithBFP) and model.backbone.backbone is fpn
    assert (model.backbone.bfp.refine_level, model.backbone.bfp.refine_type) == (0, None)


def test_use_balanced_feature_pyramid_twice_is_rejected() -> None:
    model = use_balanced_feature_pyramid(_detector_like(), refine_level=1)
    with pytest.raises(ValueError, match=r"model.backbone is already a BackboneWithBFP"):
        use_balanced_feature_pyramid(model, refine_level=1)


def test_use_balanced_feature_pyramid_needs_a_backbone() -> None:
    with pytest.raises(TypeError, match=r"model.backbone must be an FPN backbone module, got NoneType"):
        use_balanced_feature_pyramid(nn.Linear(2, 2))


def test_balancing_the_pool_level_counts_it_and_adds_the_residual_to_it() -> None:
    torch.manual_seed(0)
    backbone = _backbone()
    wrapped = BackboneWithBFP(backbone, refine_level=1, refine_type=None, balance_pool_level=True)
    assert wrapped.bfp.num_levels == len(backbone.fpn.inner_blocks) + 1
    images = torch.randn(1, 3, 64, 64)
    out, raw = wrapped(images), backbone(images)
    # levels 32, 16, 8 and 4 pixels wide, balanced at 16: the finest max-pooled, the others upsampled
    pooled = torch.nn.functional.adaptive_max_pool2d(raw["0"], (16, 16))
    upsampled = [torch.nn.functional.interpolate(raw[k], size=(16, 16)) for k in ("2", "pool")]
    balanced = (pooled + raw["1"] + upsampled[0] + upsampled[1]) / 4
    expected_pool = raw["pool"] + torch.nn.functional.adaptive_max_pool2d(balanced, (4, 4))
    torch.testing.assert_close(out["pool"], expected_pool)


def test_balance_pool_level_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="balance_pool_level must be a bool, got 1"):
        BackboneWithBFP(_backbone(), refine_level=1, balance_pool_level=1)  # type: ignore[arg-type]


def test_the_mmdet_non_local_block_is_full_width_unscaled_and_starts_as_the_identity() -> None:
    torch.manual_seed(0)
    bfp = BalancedFeaturePyramid(8, num_levels=3, refine_level=1, refine_type="non_local_mmdet")
    assert bfp.refine.theta.out_channels == 8 and bfp.refine.scale == 1.0
    x = torch.randn(2, 8, 5, 3)
    torch.testing.assert_close(bfp.refine(x), x, rtol=0, atol=0)
    assert not bfp.refine.theta.bias.any() and float(bfp.refine.theta.weight.detach().std()) < 0.05
