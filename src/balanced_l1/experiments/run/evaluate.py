"""COCO box evaluation through pycocotools, with its console output silenced.

:func:`evaluate_detector` runs a detector over a held-out split and returns COCO's AP, AP50, AP75,
APs, APm and APl (``-1`` where pycocotools gives ``-1``: no ground truth in that size range) and the
AP at each IoU threshold 0.50, 0.55, ..., 0.95, read from the ``precision`` array of ``COCOeval``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from balanced_l1.experiments.data.loader import evaluation_loader, unpack
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.metric_names import METRICS
from balanced_l1.experiments.run.distributed import DistContext, gather_objects


def _coco_from_dict(doc: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(split: DetectionSplit, detections: list[dict[str, Any]]) -> dict[str, Any]:
    """Score detections against a split's ground truth with pycocotools' ``COCOeval`` (``iouType="bbox"``).

    Args:
        split: the ground truth.
        detections: COCO results, each with ``image_id``, ``category_id``, ``bbox`` (``[x, y, w, h]``) and ``score``.

    Returns:
        ``{"AP": ..., "AP50": ..., "AP75": ..., "APs": ..., "APm": ..., "APl": ..., "ap_per_iou": [10 floats]}``;
            values are in ``[0, 1]``, or ``-1`` where the split has no ground truth to score.
    """
    gt = _coco_from_dict(copy.deepcopy(split.coco))  # COCOeval marks ground truth in place ('ignore')
    annotations = []
    for index, det in enumerate(detections):
        w, h = float(det["bbox"][2]), float(det["bbox"][3])
        annotations.append({**det, "id": index + 1, "area": w * h, "iscrowd": 0})
    dt = _coco_from_dict(
        {"images": split.coco["images"], "categories": split.coco["categories"], "annotations": annotations}
    )
    evaluator = COCOeval(gt, dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {name: float(v) for name, v in zip(METRICS, evaluator.stats[:6], strict=True)}
    # precision: [IoU thresholds, recall points, categories, area ranges (all first), max dets (100 last)]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_iou = []
    for t in range(precision.shape[0]):
        valid = precision[t][precision[t] > -1]
        per_iou.append(float(np.mean(valid)) if valid.size else -1.0)
    metrics["ap_per_iou"] = per_iou
    return metrics


@torch.no_grad()
def predict(
    model: nn.Module,
    split: DetectionSplit,
    *,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run a torchvision detector over (this rank's shard of) a split; detections in COCO result format.

    Rank ``r`` of ``world_size`` predicts the consecutive batches ``r, r + world_size, ...`` of
    ``batch_size`` images, so each image is batched (and padded) exactly as in a one-process run and the
    union of the shards equals one process's detections.

    Args:
        model: the detector (switched to eval mode here and back to its former mode afterwards).
        split: the images to run on; model label ``i + 1`` maps to ``split.category_ids[i]``.
        device: where the model lives.
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
        rank: this process's rank.
        world_size: number of processes sharing the split.
        show_progress: show a progress bar.

    Returns:
        One ``{"image_id", "category_id", "bbox", "score"}`` per detection.

    Raises:
        ImageReadError: naming an image that cannot be read.
    """
    category_ids = split.category_ids
    loader = evaluation_loader(
        split, batch_size=batch_size, rank=rank, world_size=world_size, workers=workers, device=device
    )
    was_training = model.training
    model.eval()
    detections = []
    try:
        for batch in tqdm(loader, desc="evaluating", disable=not show_progress, leave=False, dynamic_ncols=True):
            images, targets = unpack(batch)
            outputs = model([image.to(device, non_blocking=True).float().div_(255.0) for image in images])
            for target, out in zip(targets, outputs, strict=True):
                image_id = int(target["image_id"])
                boxes, labels, scores = (out[k].float().cpu().tolist() for k in ("boxes", "labels", "scores"))
                for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores, strict=True):
                    detections.append(
                        {
                            "image_id": image_id,
                            "category_id": category_ids[int(label) - 1],
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score,
                        }
                    )
    finally:
        model.train(was_training)
    return detections


def evaluate_detector(
    model: nn.Module,
    split: DetectionSplit,
    *,
    ctx: DistContext | None = None,
    device: torch.device | None = None,
    batch_size: int = 8,
    workers: int = 0,
    show_progress: bool = True,
) -> dict[str, Any] | None:
    """Predict on ``split`` (sharded over the ranks of ``ctx``) and score once with COCO's box metrics.

    Args:
        model: the detector (the unwrapped module under DDP).
        split: the held-out split.
        ctx: this process's place in the job; ``None`` for one process on ``device``.
        device: where the model lives when ``ctx`` is ``None``.
        batch_size: images per forward pass; rank ``r`` predicts batches ``r, r + world_size, ...``.
        workers: DataLoader worker processes.
        show_progress: show a progress bar.

    Returns:
        The metrics of :func:`coco_metrics` on rank 0; ``None`` on other ranks.
    """
    if ctx is None:
        ctx = DistContext(0, 1, device if device is not None else torch.device("cpu"))
    mine = predict(
        model,
        split,
        device=ctx.device,
        batch_size=batch_size,
        workers=workers,
        rank=ctx.rank,
        world_size=ctx.world_size,
        show_progress=show_progress and ctx.is_main,
    )
    shards = gather_objects(ctx, mine)
    if not ctx.is_main:
        return None
    # back into one process's order (images in split order), so that ties in score break the same way
    position = {int(info["id"]): i for i, info in enumerate(split.coco["images"])}
    detections = sorted((det for shard in shards for det in shard), key=lambda det: position[det["image_id"]])
    return coco_metrics(split, detections)
