"""Write a tiny COCO-format detection set: coloured rectangles on noise, for smoke-training a detector.

``python examples/mmdet/make_tiny_coco.py data/tiny_coco`` writes ``data/tiny_coco/images/*.png`` and
``data/tiny_coco/annotations.json`` (16 images of 128 x 128 pixels, 1 to 3 boxes each, 3 classes
named by the boxes' colours). The same seed writes the same files. It needs numpy and Pillow (the
``compare`` extra), nothing else; ``faster_rcnn_r18_balanced_l1_tiny.py`` beside it trains on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: The classes and their colours (RGB).
CLASSES = ("red", "green", "blue")
_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 60, 230))


def make_tiny_coco(root: str | Path, num_images: int = 16, size: int = 128, seed: int = 0) -> Path:
    """Write the images and ``annotations.json`` under ``root``; return the annotation file's path."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)  # dark noise
        for _ in range(int(rng.integers(1, 4))):
            width, height = (int(v) for v in rng.integers(size // 6, size // 2, size=2))
            x, y = int(rng.integers(0, size - width)), int(rng.integers(0, size - height))
            label = int(rng.integers(0, len(CLASSES)))
            pixels[y : y + height, x : x + width] = _COLOURS[label]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x, y, width, height],
                    "area": width * height,
                    "iscrowd": 0,
                }
            )
        name = f"{image_id:04d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default="data/tiny_coco")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_tiny_coco(args.root, args.num_images, args.size, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
