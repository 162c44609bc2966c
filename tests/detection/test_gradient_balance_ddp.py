"""Two gloo processes on an uneven split of a batch report the gradient balance of one process on the whole batch.

Rank 0 trains on image 0, rank 1 on images 1 and 2. The samplers draw every labelled anchor and every
proposal, so the samples are those of one process on the three images; the box losses are switched, so
the normalisers (and with them every gradient, up to the common factor the world size) are global.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from balanced_l1.detection import GradientBalanceMonitor, build_small_faster_rcnn, use_balanced_l1

WORLD_SIZE = 2
RANK_IMAGES = ([0], [1, 2])


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = use_balanced_l1(build_small_faster_rcnn(3))
    with torch.no_grad():  # deltas large enough for outliers as well as inliers
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(8.0)
        model.rpn.head.bbox_pred.bias.add_(0.6)
    model.rpn.fg_bg_sampler = BalancedPositiveNegativeSampler(1_000_000, 0.5)
    model.roi_heads.fg_bg_sampler = BalancedPositiveNegativeSampler(1_000_000, 0.5)
    return model


def _image(index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(20 + index)
    corners = torch.rand(3, 2, generator=gen) * 60
    boxes = torch.cat([corners, corners + 12 + 50 * torch.rand(3, 2, generator=gen)], dim=1)
    return torch.rand(3, 128, 128, generator=gen), {"boxes": boxes, "labels": torch.tensor([1, 2, 3])}


def _statistics(images: list[int]) -> dict[str, dict[str, float | None]]:
    model = _model()
    monitor = GradientBalanceMonitor(model)
    batch = [_image(i) for i in images]
    losses = model([b[0] for b in batch], [b[1] for b in batch])
    sum(losses.values()).backward()
    return monitor.step()


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60)
    )
    try:
        torch.save(_statistics(RANK_IMAGES[rank]), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_report_the_statistics_of_one_process_on_the_global_batch(tmp_path: Path) -> None:
    init_method = f"file://{tmp_path / 'rendezvous'}"
    mp.set_forkserver_preload(["torch", "torch.distributed", "torchvision", "balanced_l1.detection"])
    mp.start_processes(
        _worker, args=(init_method, str(tmp_path)), nprocs=WORLD_SIZE, join=True, start_method="forkserver"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    assert ranks[0] == ranks[1]  # every rank gets the global statistics
    whole = _statistics([0, 1, 2])
    local = _statistics(RANK_IMAGES[1])
    for stage, stats in whole.items():
        for name, value in stats.items():
            if value is None:
                assert ranks[0][stage][name] is None, (stage, name)
                continue
            assert ranks[0][stage][name] == pytest.approx(value, rel=1e-6), (stage, name)
    assert 0.0 < whole["roi_heads"]["inlier_fraction"] < 1.0  # type: ignore[operator]
    assert 0.0 < whole["rpn"]["inlier_fraction"] < 1.0  # type: ignore[operator]
    assert local["roi_heads"]["inlier_fraction"] != whole["roi_heads"]["inlier_fraction"]  # the split matters
