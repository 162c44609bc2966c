"""An embedded synthetic detection data set, generated deterministically, where precise boxes matter.

Every image is a noisy colour gradient with clutter (thin lines and small blobs that are not objects)
and one to five objects of three classes -- rectangle, ellipse, triangle -- of many sizes (8 pixels
to 92% of the image side: at 128 pixels COCO's small, medium and large ranges all occur) and aspect
ratios (1:2.5 to 2.5:1). Each class has a hue (red, green, blue, with jitter) while clutter takes any
colour, so classifying is easy and the task is mostly localisation. Each shape touches all four
sides of its box, so the box is tight. Objects are drawn in sequence and may partly hide earlier
ones (at most half of an earlier box); the box stays the full (amodal) extent. Image ``i`` of a
split depends only on ``(seed, split, i)``, so a larger set starts with the images of a smaller one.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from balanced_l1.experiments.data.datasets import SplitSamples
from balanced_l1.experiments.data.images import MemoryImages
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.params import check_choice, check_number

CATEGORIES = ({"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"}, {"id": 3, "name": "triangle"})
_SPLIT_KEYS = {"train": 1, "val": 2}
_MAX_OCCLUSION = 0.5
_CLASS_HUES = {1: 0.0, 2: 1 / 3, 3: 2 / 3}
_GENERATOR_VERSION = 1  # raise it whenever a change of this module changes the images or annotations


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    corners = rng.uniform(40, 215, size=(2, 2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    s = np.linspace(0.0, 1.0, size)[None, :, None]
    top = corners[0, 0] * (1 - s) + corners[0, 1] * s
    bottom = corners[1, 0] * (1 - s) + corners[1, 1] * s
    field = top * (1 - t) + bottom * t + rng.normal(0.0, 8.0, size=(size, size, 3))
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _class_colour(rng: np.random.Generator, category: int) -> tuple[int, int, int]:
    hue = (_CLASS_HUES[category] + rng.uniform(-0.07, 0.07)) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
    return round(255 * red), round(255 * green), round(255 * blue)


def _add_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(0, size, size=2)
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(10, size / 2)
            end = (x0 + length * math.cos(angle), y0 + length * math.sin(angle))
            draw.line([(x0, y0), end], fill=_colour(rng), width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(1.5, 3.5)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=_colour(rng))


def _draw_shape(
    draw: ImageDraw.ImageDraw, category: int, box: tuple[int, int, int, int], orientation: int, fill: Any
) -> None:
    x0, y0, x1, y1 = box
    if category == 1:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif category == 2:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        xm, ym = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        apexes: dict[int, list[tuple[float, float]]] = {
            0: [(xm, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)],
            1: [(xm, y1 - 1), (x1 - 1, y0), (x0, y0)],
            2: [(x0, ym), (x1 - 1, y0), (x1 - 1, y1 - 1)],
            3: [(x1 - 1, ym), (x0, y0), (x0, y1 - 1)],
        }
        draw.polygon(apexes[orientation], fill=fill)


def _sample_box(rng: np.random.Generator, size: int) -> tuple[int, int, int, int]:
    if rng.random() < 0.12:
        area = rng.uniform(0.75 * size, 0.92 * size) ** 2
    else:
        area = math.exp(rng.uniform(math.log(8.0), math.log(size / 2))) ** 2
    ratio = math.exp(rng.uniform(-math.log(2.5), math.log(2.5)))
    w = int(min(size - 2, max(6, round(math.sqrt(area * ratio)))))
    h = int(min(size - 2, max(6, round(math.sqrt(area / ratio)))))
    x = int(rng.integers(0, size - w + 1))
    y = int(rng.integers(0, size - h + 1))
    return x, y, x + w, y + h


def _hides_too_much(new: tuple[int, int, int, int], earlier: list[tuple[int, int, int, int]]) -> bool:
    for box in earlier:
        iw = min(new[2], box[2]) - max(new[0], box[0])
        ih = min(new[3], box[3]) - max(new[1], box[1])
        if iw > 0 and ih > 0 and iw * ih > _MAX_OCCLUSION * (box[2] - box[0]) * (box[3] - box[1]):
            return True
    return False


def _make_image(seed: int, split_key: int, index: int, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng([seed, split_key, index])
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    _add_clutter(draw, rng, size)
    boxes: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(20):
            box = _sample_box(rng, size)
            if not _hides_too_much(box, boxes):
                break
        else:
            continue
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        _draw_shape(draw, category, box, int(rng.integers(0, 4)), _class_colour(rng, category))
        boxes.append(box)
        objects.append({"category_id": category, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    return np.asarray(image, dtype=np.uint8), objects


def _report(coco: dict[str, Any]) -> dict[str, int]:
    annotated = {a["image_id"] for a in coco["annotations"]}
    used = {a["category_id"] for a in coco["annotations"]}
    images, annotations = len(coco["images"]), len(coco["annotations"])
    return {
        "images": images,
        "annotations": annotations,
        "degenerate_boxes_dropped": 0,
        "boxes_outside_image_dropped": 0,
        "boxes_clipped": 0,
        "crowd_regions": 0,
        "training_boxes": annotations,
        "images_without_annotations": images - len(annotated),
        "images_without_training_boxes": images - len(annotated),
        "categories": len(coco["categories"]),
        "unused_categories": len(coco["categories"]) - len(used),
    }


def make_synthetic_split(split: str, num_images: int, *, image_size: int = 128, seed: int = 0) -> DetectionSplit:
    """Generate one split of the synthetic data set, held in memory.

    Args:
        split: ``"train"`` or ``"val"``; the splits draw from different random streams, so they never share images.
        num_images: number of images, >= 1.
        image_size: side of the square images in pixels, >= 64.
        seed: the data set's seed (independent of the training seed).

    Returns:
        A :class:`DetectionSplit` with COCO annotations (boxes ``[x, y, width, height]`` in pixels); its
            fingerprint is a hash of these settings and of the generator's version.

    Raises:
        ValueError: for an unknown split, ``num_images < 1`` or ``image_size < 64``.

    Example:
        >>> a = make_synthetic_split("val", 2, seed=3)
        >>> b = make_synthetic_split("val", 2, seed=3)
        >>> bool((a.load_image(1) == b.load_image(1)).all()) and a.coco == b.coco
        True
    """
    check_choice("split", split, sorted(_SPLIT_KEYS))
    num_images = check_number("num_images", num_images, minimum=1, integer=True)
    image_size = check_number("image_size (pixels)", image_size, minimum=64, integer=True)
    images: list[np.ndarray] = []
    infos: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(num_images):
        pixels, objects = _make_image(seed, _SPLIT_KEYS[split], index, image_size)
        image_id = index + 1
        images.append(pixels)
        infos.append(
            {"id": image_id, "file_name": f"{split}_{index:05d}.png", "width": image_size, "height": image_size}
        )
        for obj in objects:
            w, h = obj["bbox"][2], obj["bbox"][3]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "area": float(w * h), "iscrowd": 0, **obj}
            )
    coco = {"images": infos, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
    settings = f"synthetic v{_GENERATOR_VERSION} split={split} images={num_images} size={image_size} seed={seed}"
    fingerprint = hashlib.sha256(settings.encode("utf-8")).hexdigest()
    samples = SplitSamples.from_coco(coco, MemoryImages(tuple(images)))
    return DetectionSplit(split, coco, samples, _report(coco), fingerprint)


def make_synthetic_dataset(
    num_train: int, num_val: int, *, image_size: int = 128, seed: int = 0
) -> dict[str, DetectionSplit]:
    """Generate the training and the held-out split of the synthetic data set.

    Args:
        num_train: number of training images.
        num_val: number of held-out images.
        image_size: side of the square images in pixels.
        seed: the data set's seed.

    Returns:
        ``{"train": DetectionSplit, "val": DetectionSplit}``.
    """
    return {
        "train": make_synthetic_split("train", num_train, image_size=image_size, seed=seed),
        "val": make_synthetic_split("val", num_val, image_size=image_size, seed=seed),
    }
