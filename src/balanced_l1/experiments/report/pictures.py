"""Pictures of trained runs: detections beside the ground truth, and AP over training.

``detections.png`` (written by ``balanced-l1 compare``) shows the first :data:`SHOWN_IMAGES` images of the held-out
split, one row each: the ground truth, then each arm's detections (its first seed's model), side by side.
``balanced-l1 evaluate OUT --show N`` writes the same row for each of the first ``N`` images, one file per image.
Boxes are drawn with :func:`torchvision.utils.draw_bounding_boxes` on the image (enlarged by a whole factor when
it is small, so that boxes and labels stay legible); a detection is drawn when its score is at least
``min_score`` (:data:`MIN_SCORE`), at most :data:`MAX_BOXES` per image, highest scores first.

``ap_curve.png`` draws each run's AP on the held-out split against the iteration, from the validations that
``--eval-every`` records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balanced_l1._files import save_figure_atomically
from balanced_l1.experiments.data.datasets import DetectionDataset
from balanced_l1.experiments.data.split import DetectionSplit

SHOWN_IMAGES = 4
MIN_SCORE = 0.3
MAX_BOXES = 20
GROUND_TRUTH_COLOR = "#00ff00"
#: one colour per arm (matplotlib's tab10 without its green, which the ground truth uses)
ARM_COLORS = ("#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_SMALL_SIDE = 256  # images smaller than this are enlarged by a whole factor before boxes are drawn


@dataclass(frozen=True)
class Panel:
    """One picture of one image: the boxes drawn on it and their labels.

    Attributes:
        title: the column's title (``"ground truth"`` or the arm's name).
        boxes: ``float32 (K, 4)``, ``x1, y1, x2, y2`` in the image's own pixels.
        labels: one text per box (category name, and the score for a detection).
        color: the boxes' colour.
    """

    title: str
    boxes: torch.Tensor
    labels: list[str]
    color: str


def category_names(split: DetectionSplit) -> dict[int, str]:
    """Model label (1-based, contiguous) to category name."""
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in split.coco["categories"]}
    return {index + 1: names[cid] for index, cid in enumerate(split.category_ids)}


def load_images(split: DetectionSplit, indices: Sequence[int]) -> list[torch.Tensor]:
    """The images at ``indices``, ``uint8 (3, H, W)`` each."""
    dataset = DetectionDataset(split)
    return [dataset[i][0] for i in indices]


def ground_truth_panel(split: DetectionSplit, index: int) -> Panel:
    """The ground-truth boxes of image ``index`` (crowd regions left out, as in training)."""
    target = split.target(index)
    names = category_names(split)
    return Panel("ground truth", target["boxes"].float(), [names[int(v)] for v in target["labels"]], GROUND_TRUTH_COLOR)


@torch.no_grad()
def predict_images(model: nn.Module, images: Sequence[torch.Tensor], device: torch.device) -> list[dict[str, Any]]:
    """The model's raw outputs (``boxes``, ``labels``, ``scores`` on the CPU) for ``images``, one forward pass.

    The model is put in eval mode and back to its former mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        outputs = model([image.to(device).float().div_(255.0) for image in images])
    finally:
        model.train(was_training)
    return [{k: v.detach().cpu() for k, v in out.items()} for out in outputs]


def detection_panel(
    title: str, output: dict[str, Any], names: dict[int, str], color: str, *, min_score: float = MIN_SCORE
) -> Panel:
    """The detections of one output of :func:`predict_images` that are drawn (score >= ``min_score``, at most
    :data:`MAX_BOXES`, highest first)."""
    scores = output["scores"].float()
    keep = torch.argsort(scores, descending=True, stable=True)
    keep = keep[scores[keep] >= min_score][:MAX_BOXES]
    labels = [f"{names.get(int(output['labels'][i]), '?')} {float(scores[i]):.2f}" for i in keep]
    return Panel(f"{title}: {len(keep)} with score >= {min_score:g}", output["boxes"][keep].float(), labels, color)


def draw_panel(image: torch.Tensor, panel: Panel) -> torch.Tensor:
    """``image`` (``uint8 (3, H, W)``) with the panel's boxes drawn, enlarged ``scale(image)`` times."""
    from torchvision.utils import draw_bounding_boxes

    factor = scale(image)
    big = image.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2) if factor > 1 else image
    if panel.boxes.numel() == 0:
        return big.clone()
    return draw_bounding_boxes(big, panel.boxes * factor, labels=panel.labels, colors=panel.color, width=2)


def scale(image: torch.Tensor) -> int:
    """The whole factor a small image is enlarged by before boxes are drawn on it (1 from 256 pixels up)."""
    return max(1, _SMALL_SIDE // max(int(image.shape[-1]), int(image.shape[-2]), 1))


def _figure(rows: list[tuple[str, torch.Tensor, list[Panel]]]) -> Any:
    from matplotlib.figure import Figure

    columns = max(len(panels) for _, _, panels in rows)
    fig = Figure(figsize=(3.2 * columns, 3.4 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (name, image, panels) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(panels):
                ax.imshow(draw_panel(image, panels[c]).permute(1, 2, 0).numpy())
                ax.set_title(f"{panels[c].title}\n{name}" if c == 0 else panels[c].title, fontsize=9)
    fig.tight_layout()
    return fig


def panel_rows(
    split: DetectionSplit,
    indices: Sequence[int],
    models: dict[str, nn.Module],
    device: torch.device,
    *,
    min_score: float = MIN_SCORE,
) -> list[tuple[str, torch.Tensor, list[Panel]]]:
    """For each image: its name, pixels and panels (ground truth, then one per model, in ``models``' order)."""
    images = load_images(split, indices)
    names = category_names(split)
    outputs = {arm: predict_images(model, images, device) for arm, model in models.items()}
    rows = []
    for k, (index, image) in enumerate(zip(indices, images, strict=True)):
        panels = [ground_truth_panel(split, index)]
        for a, arm in enumerate(models):
            color = ARM_COLORS[a % len(ARM_COLORS)]
            panels.append(detection_panel(arm, outputs[arm][k], names, color, min_score=min_score))
        rows.append((f"image {split.image_id(index)}", image, panels))
    return rows


def save_detections_figure(
    split: DetectionSplit,
    models: dict[str, nn.Module],
    path: str | os.PathLike[str],
    device: torch.device,
    *,
    images: int = SHOWN_IMAGES,
) -> Path:
    """``detections.png``: the first ``images`` images of ``split``, ground truth and each model's detections."""
    rows = panel_rows(split, range(min(images, len(split))), models, device)
    return save_figure_atomically(_figure(rows), path)


def save_image_pictures(
    split: DetectionSplit,
    models: dict[str, nn.Module],
    folder: str | os.PathLike[str],
    device: torch.device,
    count: int,
) -> list[Path]:
    """One picture per image of the first ``count`` of ``split``: ``folder/image<id>.png``."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(split))):
        rows = panel_rows(split, [index], models, device)
        paths.append(save_figure_atomically(_figure(rows), root / f"image{split.image_id(index)}.png"))
    return paths


def save_ap_curve_figure(curves: dict[str, dict[int, list[dict[str, float]]]], path: str | os.PathLike[str]) -> Path:
    """``ap_curve.png``: AP on the held-out split against the iteration, per arm (one line per seed).

    Args:
        curves: ``{arm: {seed: [{"iteration": n, "AP": ...}, ...]}}`` (see
            :func:`~balanced_l1.experiments.run.train.validation_curve`).
        path: the file.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for index, (arm, by_seed) in enumerate(curves.items()):
        for k, (_, curve) in enumerate(sorted(by_seed.items())):
            xs = [point["iteration"] for point in curve]
            ys = [100 * point["AP"] for point in curve]
            ax.plot(xs, ys, marker="o", color=f"C{index}", alpha=0.85, label=arm if k == 0 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP on the held-out split during training (each line one seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure_atomically(fig, path)
