"""A small data set in COCO's own layout with the quirks of real COCO, for tests of the data path and of ``compare``.

``write_coco_quirks(root)`` writes::

    root/annotations/instances_train.json   root/train/*.jpg|png    (20 images of 128x128)
    root/annotations/instances_val.json     root/val/*.jpg|png      ( 8 images of 128x128)

Every object is a filled shape whose colour gives its class (red square, green disc, blue triangle), so a detector
can learn it. The quirks: sparse category ids (3, 7, 12) and an unused category (90); sparse image and annotation
ids; extra fields (``info``, ``licenses``, ``coco_url``, polygon ``segmentation``); zero-width and zero-height
boxes; boxes a fraction of a pixel and several pixels past the border; a box wholly outside the image; crowd
regions with uncompressed RLE segmentation over a cluster of small discs; images without annotations; grayscale
and CMYK JPEGs and an RGBA PNG. The returned ``report`` holds the counts the loader is expected to report, tallied
while writing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
NUM_IMAGES = {"train": 20, "val": 8}
CATEGORIES = [
    {"supercategory": "shape", "id": 3, "name": "square"},
    {"supercategory": "shape", "id": 7, "name": "disc"},
    {"supercategory": "shape", "id": 12, "name": "triangle"},
    {"supercategory": "shape", "id": 90, "name": "unused"},
]
COLOURS = {3: (220, 30, 30), 7: (30, 200, 40), 12: (40, 60, 230)}
# image index -> how it is stored (every other image is an RGB JPEG)
MODES = {"train": {5: "L", 6: "CMYK", 7: "RGBA"}, "val": {1: "CMYK", 2: "RGBA", 3: "L"}}
EMPTY = {"train": (18, 19), "val": (7,)}  # images without any object
CROWD = {"train": 4, "val": 5}  # the image holding a crowd region


def _draw(draw: ImageDraw.ImageDraw, category: int, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    if category == 3:
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[category])
    elif category == 7:
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=COLOURS[category])
    else:
        draw.polygon([(x + (w - 1) / 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)], fill=COLOURS[category])


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


class _Writer:
    def __init__(self, split: str) -> None:
        self.split = split
        self.annotations: list[dict[str, Any]] = []
        self.kept: set[int] = set()  # images with an annotation the loader keeps
        self.trained: set[int] = set()  # images with a training box
        self.used: set[int] = set()  # categories of kept annotations
        self.report = dict.fromkeys(
            (
                "degenerate_boxes_dropped",
                "boxes_outside_image_dropped",
                "boxes_clipped",
                "crowd_regions",
                "training_boxes",
            ),
            0,
        )

    def annotate(self, image_id: int, category: int, bbox: list[float], *, kept: bool = True, **extra: Any) -> None:
        x, y, w, h = bbox
        if kept:
            self.kept.add(image_id)
            self.used.add(category)
            if not extra.get("iscrowd"):
                self.trained.add(image_id)
        self.annotations.append(
            {
                "id": 1000 + 7 * len(self.annotations),
                "image_id": image_id,
                "category_id": category,
                "bbox": bbox,
                "area": float(w * h),
                "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                **extra,
            }
        )

    def objects(self, rng: np.random.Generator, draw: ImageDraw.ImageDraw, image_id: int, index: int) -> None:
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(v) for v in rng.integers(18, 56, size=2))
            x, y = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
            if any(x < bx + bw and bx < x + w and y < by + bh and by < y + h for bx, by, bw, bh in placed):
                continue
            category = (3, 7, 12)[int(rng.integers(0, 3))]
            _draw(draw, category, (x, y, w, h))
            placed.append((x, y, w, h))
            self.annotate(image_id, category, [x, y, w, h])
            self.report["training_boxes"] += 1

    def quirks(self, draw: ImageDraw.ImageDraw, image_id: int, index: int) -> None:
        if self.split == "train" and index == 0:
            self.annotate(image_id, 3, [20.0, 30.0, 0.0, 12.0], kept=False)
            self.annotate(image_id, 7, [60.65, 88.33, 1.03, 0.0], kept=False)
            self.annotate(image_id, 12, [130.0, 10.0, 6.0, 6.0], kept=False)
            self.report["degenerate_boxes_dropped"] += 2
            self.report["boxes_outside_image_dropped"] += 1
        if index == 2:  # a square touching the right border, annotated 0.4 pixel past it
            _draw(draw, 3, (SIZE - 30, 90, 30, 24))
            self.annotate(image_id, 3, [SIZE - 30.0, 90.0, 30.4, 24.0])
            self.report["boxes_clipped"] += 1
            self.report["training_boxes"] += 1
        if self.split == "train" and index == 3:  # a disc in the top-left corner, annotated well past it
            _draw(draw, 7, (0, 0, 34, 26))
            self.annotate(image_id, 7, [-6.0, -3.5, 40.0, 29.5])
            self.report["boxes_clipped"] += 1
            self.report["training_boxes"] += 1
        if index == CROWD[self.split]:
            mask = np.zeros((SIZE, SIZE), dtype=bool)
            for k in range(6):
                cx, cy = 88 + 6 * (k % 3), 8 + 6 * (k // 3)
                draw.ellipse([cx, cy, cx + 4, cy + 4], fill=COLOURS[7])
                mask[cy : cy + 5, cx : cx + 5] = True
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            self.annotate(image_id, 7, box, iscrowd=1, segmentation=_uncompressed_rle(mask))
            self.annotations[-1]["area"] = float(mask.sum())
            self.report["crowd_regions"] += 1


def _background(rng: np.random.Generator) -> Image.Image:
    base = rng.uniform(90, 180, size=3)
    ramp = np.linspace(-25.0, 25.0, SIZE)[None, :, None]
    field = base + ramp + rng.normal(0.0, 6.0, size=(SIZE, SIZE, 3))
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _save(image: Image.Image, mode: str, folder: Path, stem: str) -> str:
    if mode == "RGBA":
        name = f"{stem}.png"
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(folder / name)
    else:
        name = f"{stem}.jpg"
        image.convert(mode).save(folder / name, quality=95)
    return name


def _write_split(root: Path, split: str) -> tuple[Path, Path, dict[str, int]]:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(split)
    images = []
    for index in range(NUM_IMAGES[split]):
        rng = np.random.default_rng([17, len(split), index])
        image_id = 100 + 37 * index + (0 if split == "train" else 5000)
        image = _background(rng)
        draw = ImageDraw.Draw(image)
        if index not in EMPTY[split]:
            writer.objects(rng, draw, image_id, index)
            writer.quirks(draw, image_id, index)
        name = _save(image, MODES[split].get(index, "RGB"), folder, f"{image_id:012d}")
        images.append(
            {"license": 1, "file_name": name, "coco_url": f"http://example.invalid/{name}", "height": SIZE,
             "width": SIZE, "date_captured": "2013-11-14 11:18:45", "id": image_id}
        )  # fmt: skip
    report = {
        "images": len(images),
        "annotations": len(writer.annotations),
        **writer.report,
        "images_without_annotations": len(images) - len(writer.kept),
        "images_without_training_boxes": len(images) - len(writer.trained),
        "categories": len(CATEGORIES),
        "unused_categories": len(CATEGORIES) - len(writer.used),
    }
    doc = {
        "info": {"description": "quirks of COCO", "version": "1.0", "year": 2017},
        "licenses": [{"url": "http://example.invalid/license", "id": 1, "name": "example"}],
        "images": images,
        "annotations": writer.annotations,
        "categories": CATEGORIES,
    }
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(doc), encoding="utf-8")
    return ann_file, folder, report


def write_coco_quirks(root: Path) -> dict[str, Any]:
    """Write the quirky COCO-layout data set under ``root``.

    Args:
        root: the folder to fill (created if missing).

    Returns:
        ``train_ann``, ``train_root``, ``val_ann``, ``val_root`` (paths) and ``report``: ``{"train": counts,
        "val": counts}`` as the loader should report them.
    """
    paths: dict[str, Any] = {"report": {}}
    for split in ("train", "val"):
        ann_file, folder, report = _write_split(Path(root), split)
        paths[f"{split}_ann"], paths[f"{split}_root"], paths["report"][split] = ann_file, folder, report
    return paths
