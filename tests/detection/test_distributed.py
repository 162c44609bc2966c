"""Two gloo processes on an uneven split of a batch compute the loss and gradients of one process.

Each loss gets the inputs torchvision hands it (RoI head: class logits, box deltas, labels, targets
per image; RPN: objectness, deltas, anchor labels, targets; RetinaNet: targets, head outputs,
anchors, matched indices; SSD: the same plus class logits and labels), produced by small float64
linear layers so that there are parameter gradients to average. Rank 0 holds one image, rank 1
two, so every count differs between ranks.

The ranks are started by a fork server: a fresh interpreter that imports torch and torchvision once
and then forks each rank. Forking the test process itself would be faster but unsafe: by the time
this test runs, other tests may have started JAX's and OpenMP's threads, and a forked child of a
multithreaded process can deadlock on a lock one of those threads held.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead

from balanced_l1.detection import use_balanced_l1
from balanced_l1.detection.box_loss import BoxLossConfig
from balanced_l1.detection.losses import roi_head_losses

WORLD_SIZE = 2
RANK_IMAGES = ([0], [1, 2])
ROIS_PER_IMAGE = (7, 12, 4)
ANCHORS_PER_IMAGE = 24
IGNORED_FRACTION = (0.7, 0.2, 0.4)
NUM_CLASSES = 3
FEATURES = 6
LOSSES = ("roi_classifier", "roi_box", "rpn_objectness", "rpn_box", "retinanet_box", "ssd_box", "ssd_classification")
CONFIG = BoxLossConfig()


def _backbone() -> nn.Module:
    backbone = nn.Conv2d(3, 8, 3, stride=8, padding=1)
    backbone.out_channels = 8
    return backbone


def _heads() -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    return {
        "roi": nn.Linear(FEATURES, 5 * NUM_CLASSES).double(),
        "rpn": nn.Linear(FEATURES, 5).double(),
        "retinanet": nn.Linear(FEATURES, 4).double(),
        "ssd": nn.Linear(FEATURES, 4 + NUM_CLASSES).double(),
    }


def _image(index: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(10 + index)
    rois, anchors = ROIS_PER_IMAGE[index], ANCHORS_PER_IMAGE
    anchor_labels = (torch.rand(anchors, generator=gen) < 0.3).double()
    anchor_labels[torch.rand(anchors, generator=gen) < IGNORED_FRACTION[index]] = -1.0
    corners = torch.rand(anchors, 2, generator=gen, dtype=torch.float64) * 40
    anchor_boxes = torch.cat([corners, corners + 4 + 20 * torch.rand(anchors, 2, generator=gen)], dim=1)
    return {
        "roi_features": torch.randn(rois, FEATURES, generator=gen, dtype=torch.float64),
        "roi_labels": torch.randint(0, NUM_CLASSES, (rois,), generator=gen),
        "roi_targets": 1.5 * torch.randn(rois, 4, generator=gen, dtype=torch.float64),
        "anchor_features": torch.randn(anchors, FEATURES, generator=gen, dtype=torch.float64),
        "anchor_labels": anchor_labels,
        "anchor_targets": torch.randn(anchors, 4, generator=gen, dtype=torch.float64),
        "anchors": anchor_boxes,
        "gt_boxes": anchor_boxes[:3] + torch.rand(3, 4, generator=gen, dtype=torch.float64),
        "matched_idxs": torch.randint(-2, 3, (anchors,), generator=gen),
        "gt_labels": torch.randint(1, NUM_CLASSES, (3,), generator=gen),
    }


def _losses(images: list[int]) -> dict[str, Tensor]:
    """Every adapted loss on ``images``, then their gradients (summed over the losses)."""
    heads = _heads()
    data = [_image(i) for i in images]
    roi_out = heads["roi"](torch.cat([d["roi_features"] for d in data]))
    roi = roi_head_losses(
        roi_out[:, :NUM_CLASSES],
        roi_out[:, NUM_CLASSES:],
        [d["roi_labels"] for d in data],
        [d["roi_targets"] for d in data],
        CONFIG,
    )

    detector = use_balanced_l1(FasterRCNN(_backbone(), NUM_CLASSES, rpn_anchor_generator=AnchorGenerator()))
    detector.rpn.fg_bg_sampler = BalancedPositiveNegativeSampler(10_000, 0.5)  # samples every labelled anchor
    rpn_out = heads["rpn"](torch.cat([d["anchor_features"] for d in data]))
    rpn = detector.rpn.compute_loss(
        rpn_out[:, :1], rpn_out[:, 1:], [d["anchor_labels"] for d in data], [d["anchor_targets"] for d in data]
    )

    retinanet = use_balanced_l1(RetinaNet(_backbone(), NUM_CLASSES, anchor_generator=AnchorGenerator()))
    deltas = heads["retinanet"](torch.stack([d["anchor_features"] for d in data]))
    retina = retinanet.head.regression_head.compute_loss(
        [{"boxes": d["gt_boxes"]} for d in data],
        {"bbox_regression": deltas},
        [d["anchors"] for d in data],
        [d["matched_idxs"] for d in data],
    )

    ssd_model = SSD(_backbone(), DefaultBoxGenerator([[2]]), (32, 32), NUM_CLASSES, head=SSDHead([8], [4], NUM_CLASSES))
    ssd_out = heads["ssd"](torch.stack([d["anchor_features"] for d in data]))
    ssd = use_balanced_l1(ssd_model).compute_loss(
        [{"boxes": d["gt_boxes"], "labels": d["gt_labels"]} for d in data],
        {"bbox_regression": ssd_out[..., :4], "cls_logits": ssd_out[..., 4:]},
        [d["anchors"] for d in data],
        [d["matched_idxs"] for d in data],
    )

    losses = dict(zip(LOSSES, (*roi, *rpn, retina, ssd["bbox_regression"], ssd["classification"]), strict=True))
    sum(losses.values()).backward()
    grads = {f"grad_{name}.{p}": t.grad for name, head in heads.items() for p, t in head.named_parameters()}
    return {name: value.detach() for name, value in {**losses, **grads}.items()}


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60)
    )
    try:
        result = _losses(RANK_IMAGES[rank])
        for name, value in result.items():
            if name.startswith("grad_"):  # what DDP does: sum over ranks, divide by the world size
                dist.all_reduce(value)
                value /= WORLD_SIZE
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _rank_mean(results: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {name: sum(r[name] for r in results) / len(results) for name in results[0]}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tensor]:
    """Losses averaged over the two ranks and the DDP-averaged gradients (identical on both ranks)."""
    out_dir = tmp_path_factory.mktemp("ddp")
    init_method = f"file://{out_dir / 'rendezvous'}"
    mp.set_forkserver_preload(["torch", "torch.distributed", "torchvision", "balanced_l1.detection"])
    mp.start_processes(
        _worker, args=(init_method, str(out_dir)), nprocs=WORLD_SIZE, join=True, start_method="forkserver"
    )
    results = [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for name in results[0]:
        if name.startswith("grad_"):
            assert torch.equal(results[0][name], results[1][name]), name
    return _rank_mean(results)


@pytest.fixture(scope="module")
def one_process() -> dict[str, Tensor]:
    return _losses([0, 1, 2])


def test_uneven_split_really_has_different_counts_per_rank() -> None:
    for key in ("roi_labels", "anchor_labels", "matched_idxs"):
        counts = [sum(len(_image(i)[key]) for i in images) for images in RANK_IMAGES]
        assert counts[0] != counts[1], key
    sampled = [sum(int((_image(i)["anchor_labels"] >= 0).sum()) for i in images) for images in RANK_IMAGES]
    assert sampled[0] != sampled[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSSES)
def test_two_processes_mean_loss_equals_one_process_loss(
    name: str, two_processes: dict[str, Tensor], one_process: dict[str, Tensor]
) -> None:
    torch.testing.assert_close(two_processes[name], one_process[name], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_two_processes_averaged_gradients_equal_one_process_gradients(
    two_processes: dict[str, Tensor], one_process: dict[str, Tensor]
) -> None:
    grads = [name for name in one_process if name.startswith("grad_")]
    assert len(grads) == 8
    for name in grads:
        assert one_process[name].abs().max() > 1e-3, name
        torch.testing.assert_close(two_processes[name], one_process[name], rtol=1e-6, atol=1e-6, msg=name)


def test_per_rank_normalisers_would_give_different_losses_and_gradients(one_process: dict[str, Tensor]) -> None:
    naive = _rank_mean([_losses(images) for images in RANK_IMAGES])  # each rank divides by its own counts
    for name in one_process:
        difference = (naive[name] - one_process[name]).abs().max()
        assert difference > 1e-3 * one_process[name].abs().max(), name
