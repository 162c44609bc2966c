"""COCO box evaluation through pycocotools, with its console output silenced.

:func:`evaluate_detector` runs a detector over a held-out split and returns COCO's AP, AP50, AP75,
APs, APm and APl (``-1`` where pycocotools gives ``-1``: no ground truth in that size range) and the
AP at each IoU threshold 0.50, 0.55, ..., 0.95, read from the ``precision`` array of ``COCOeval``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from balanced_l1.experiments.coco_data import DetectionDataset, DetectionSplit

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


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
    gt = _coco_from_dict(split.coco)
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
    model: nn.Module, split: DetectionSplit, *, device: torch.device, batch_size: int = 16, show_progress: bool = True
) -> list[dict[str, Any]]:
    """Run a torchvision detector over a split and return its detections in COCO result format.

    Args:
        model: the detector (switched to eval mode here and back to its former mode afterwards).
        split: the images to run on; model label ``i + 1`` maps to ``split.category_ids[i]``.
        device: where the model lives.
        batch_size: images per forward pass.
        show_progress: show a progress bar.

    Returns:
        One ``{"image_id", "category_id", "bbox", "score"}`` per detection.
    """
    dataset = DetectionDataset(split)
    category_ids = split.category_ids
    was_training = model.training
    model.eval()
    detections = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="evaluating", disable=not show_progress, leave=False, dynamic_ncols=True):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model([image.to(device).float().div_(255.0) for image, _ in batch])
        for (_, target), out in zip(batch, outputs, strict=True):
            image_id = int(target["image_id"])
            for box, label, score in zip(
                out["boxes"].cpu().tolist(), out["labels"].cpu().tolist(), out["scores"].cpu().tolist(), strict=True
            ):
                x1, y1, x2, y2 = box
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": category_ids[label - 1],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )
    model.train(was_training)
    return detections


def evaluate_detector(
    model: nn.Module, split: DetectionSplit, *, device: torch.device, show_progress: bool = True
) -> dict[str, Any]:
    """Predict on ``split`` and score with COCO's box metrics.

    Args:
        model: the detector.
        split: the held-out split.
        device: where the model lives.
        show_progress: show a progress bar.

    Returns:
        The metrics of :func:`coco_metrics`.
    """
    return coco_metrics(split, predict(model, split, device=device, show_progress=show_progress))
