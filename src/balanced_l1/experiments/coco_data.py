"""Detection data in COCO format: in-memory splits, loading and validating a folder, a torch Dataset.

Folder layout read by :func:`load_coco_folder` (and written by :func:`save_coco_folder`)::

    PATH/annotations/train.json    COCO detection annotations of the training split
    PATH/annotations/val.json      COCO detection annotations of the held-out split
    PATH/images/<file_name>        every image named by either JSON file (any format PIL reads)

Each JSON file holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``image_id``, ``category_id``, ``bbox`` = ``[x, y, width, height]`` in pixels; optional ``id``,
``area``, ``iscrowd``) and ``categories`` (``id``, ``name``; the same in both files). Everything is
checked before any training starts; the first problem raises :class:`DataError` naming the file
and the reason.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from balanced_l1._files import write_atomically

SPLITS = ("train", "val")


class DataError(ValueError):
    """A data set file is missing, malformed or inconsistent; the message names the file and the reason."""


class ImageReadError(DataError):
    """An image cannot be read."""


@dataclass(frozen=True)
class DetectionSplit:
    """One split of a detection data set, held in memory.

    Attributes:
        name: the split's name, ``"train"`` or ``"val"``.
        images: RGB images as ``uint8`` arrays of shape ``(height, width, 3)``, in the order of
            ``coco["images"]``.
        coco: the COCO annotation dictionary (``images``, ``annotations``, ``categories``) with every
            annotation carrying ``id``, ``area`` and ``iscrowd``.
    """

    name: str
    images: list[np.ndarray]
    coco: dict[str, Any]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.coco, sort_keys=True).encode()).hexdigest()

    @property
    def report(self) -> dict[str, int]:
        return {"images": len(self.images), "annotations": len(self.coco["annotations"])}

    @property
    def category_ids(self) -> list[int]:
        """The sorted COCO category ids; model label ``i + 1`` stands for ``category_ids[i]``."""
        return sorted(int(c["id"]) for c in self.coco["categories"])


class DetectionDataset(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """A torchvision-detection view of a :class:`DetectionSplit`: ``(image, target)`` pairs.

    The image is a float tensor ``(3, H, W)`` in ``[0, 1]``; the target holds ``boxes`` (``x1, y1, x2,
    y2``), ``labels`` (contiguous, 1-based) and ``image_id``. Crowd annotations are left out of training.

    Args:
        split: the split to serve.
    """

    def __init__(self, split: DetectionSplit) -> None:
        label_of = {cid: i + 1 for i, cid in enumerate(split.category_ids)}
        by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in split.coco["images"]}
        for ann in split.coco["annotations"]:
            if not ann.get("iscrowd", 0):
                by_image[int(ann["image_id"])].append(ann)
        self._images = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) for im in split.images]
        self._targets = []
        for info in split.coco["images"]:
            anns = by_image[int(info["id"])]
            boxes = torch.tensor([_xywh_to_xyxy(a["bbox"]) for a in anns], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([label_of[int(a["category_id"])] for a in anns], dtype=torch.int64)
            self._targets.append({"boxes": boxes, "labels": labels, "image_id": torch.tensor(int(info["id"]))})

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        image, target = self._images[index], dict(self._targets[index])
        if flip:
            from torchvision import tv_tensors
            from torchvision.transforms.v2 import functional as tvf

            boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
            image, target["boxes"] = tvf.horizontal_flip(image), tvf.horizontal_flip(boxes).as_subclass(torch.Tensor)
        return image, target


def _xywh_to_xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_list(doc: dict[str, Any], key: str, where: Path) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise DataError(f"{where}: key {key!r} must be a list, got {type(value).__name__}")
    return value


def _check_categories(categories: list[Any], where: Path) -> set[int]:
    if not categories:
        raise DataError(f"{where}: 'categories' is empty; at least one category is needed")
    ids: set[int] = set()
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise DataError(f"{where}: every category needs an integer 'id' and a string 'name', got {cat!r}")
        if cat["id"] in ids:
            raise DataError(f"{where}: category id {cat['id']} appears twice")
        ids.add(cat["id"])
    return ids


def _check_images(images: list[Any], where: Path) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for info in images:
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("id"), int)
            or not isinstance(info.get("file_name"), str)
        ):
            raise DataError(f"{where}: every image needs an integer 'id' and a string 'file_name', got {info!r}")
        for key in ("width", "height"):
            if not isinstance(info.get(key), int) or info[key] <= 0:
                raise DataError(
                    f"{where}: image {info['file_name']!r} needs a positive integer {key!r}, got {info.get(key)!r}"
                )
        if info["id"] in by_id:
            raise DataError(f"{where}: image id {info['id']} appears twice")
        by_id[info["id"]] = info
    return by_id


def _check_annotation(ann: Any, index: int, images: dict[int, dict[str, Any]], cats: set[int], where: Path) -> None:
    if not isinstance(ann, dict):
        raise DataError(f"{where}: annotation #{index} must be an object, got {ann!r}")
    image_id = ann.get("image_id")
    info = images.get(image_id) if isinstance(image_id, int) else None
    if info is None:
        raise DataError(f"{where}: annotation #{index} refers to unknown image_id {image_id!r}")
    if not isinstance(ann.get("category_id"), int) or ann["category_id"] not in cats:
        raise DataError(
            f"{where}: annotation #{index} has unknown category_id {ann.get('category_id')!r}; known: {sorted(cats)}"
        )
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DataError(
            f"{where}: annotation #{index} needs 'bbox' = [x, y, width, height] of 4 finite numbers, got {bbox!r}"
        )
    x, y, w, h = bbox
    name = info["file_name"]
    if w <= 0 or h <= 0:
        raise DataError(
            f"{where}: annotation #{index} on {name!r} has a degenerate box {bbox}: width and height must be > 0"
        )
    if x < 0 or y < 0 or x + w > info["width"] or y + h > info["height"]:
        raise DataError(
            f"{where}: annotation #{index} on {name!r} has box {bbox} outside the image "
            f"({info['width']}x{info['height']}): need x >= 0, y >= 0, x + width <= {info['width']}, "
            f"y + height <= {info['height']}"
        )
    if "id" in ann and (not isinstance(ann["id"], int) or ann["id"] < 1):
        # pycocotools marks an unmatched box with id 0, so an annotation with id 0 could never be matched
        raise DataError(f"{where}: annotation #{index} needs a positive integer 'id' if given, got {ann['id']!r}")
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        raise DataError(f"{where}: annotation #{index} needs a finite 'area' >= 0 if given, got {ann['area']!r}")
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
        raise DataError(f"{where}: annotation #{index} needs 'iscrowd' 0 or 1 if given, got {ann['iscrowd']!r}")


def _read_annotation_file(where: Path) -> dict[str, Any]:
    if not where.is_file():
        raise DataError(f"{where}: annotation file not found (expected layout: PATH/annotations/{{train,val}}.json)")
    try:
        doc = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{where}: not a readable JSON file ({err})") from err
    if not isinstance(doc, dict):
        raise DataError(f"{where}: top level must be a JSON object, got {type(doc).__name__}")
    cats = _check_categories(_require_list(doc, "categories", where), where)
    images = _check_images(_require_list(doc, "images", where), where)
    annotations = _require_list(doc, "annotations", where)
    ids: set[int] = set()
    for index, ann in enumerate(annotations):
        _check_annotation(ann, index, images, cats, where)
        if "id" in ann:
            if ann["id"] in ids:
                raise DataError(f"{where}: annotation id {ann['id']} appears twice")
            ids.add(ann["id"])
    next_id = max(ids, default=0) + 1
    for ann in annotations:
        if "id" not in ann:
            ann["id"], next_id = next_id, next_id + 1
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    return doc


def _load_image(path: Path, info: dict[str, Any]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot load image ({err})") from err
    if array.shape[:2] != (info["height"], info["width"]):
        raise DataError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]} but its annotation file declares "
            f"{info['width']}x{info['height']}"
        )
    return array


def load_coco_folder(path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> dict[str, DetectionSplit]:
    """Load and validate a COCO-format folder (layout in the module docstring).

    Args:
        path: the folder holding ``annotations/`` and ``images/``.

    Returns:
        ``{"train": DetectionSplit, "val": DetectionSplit}`` with every image decoded.

    Raises:
        DataError: naming the file and the reason, for a missing folder or file, malformed JSON, a missing or
            ill-typed field, an unknown image or category id, a box with zero or negative size or outside its
            image, an image that does not load or whose size differs from the declared one, categories that
            differ between the splits, an ill-typed or repeated annotation ``id``, an ill-typed ``area`` or
            ``iscrowd``, or a held-out split without annotations.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    docs = {split: _read_annotation_file(root / "annotations" / f"{split}.json") for split in SPLITS}
    train_cats = sorted((c["id"], c["name"]) for c in docs["train"]["categories"])
    if sorted((c["id"], c["name"]) for c in docs["val"]["categories"]) != train_cats:
        raise DataError(f"{root / 'annotations' / 'val.json'}: categories differ from train.json's {train_cats}")
    if not docs["val"]["annotations"]:
        raise DataError(f"{root / 'annotations' / 'val.json'}: the held-out split has no annotations to score")
    splits = {}
    for split, doc in docs.items():
        images = [_load_image(root / "images" / info["file_name"], info) for info in doc["images"]]
        if split == "train" and not images:
            raise DataError(f"{root / 'annotations' / 'train.json'}: the training split has no images")
        splits[split] = DetectionSplit(split, images, doc)
    return splits


def format_data_report(splits: dict[str, DetectionSplit]) -> str:
    return "data: " + ", ".join(f"{n}: {s.report}" for n, s in splits.items())


def load_coco_dataset(
    train_ann: Any, train_root: Any, val_ann: Any, val_root: Any, *, follow_symlinks: bool = False
) -> dict[str, DetectionSplit]:
    raise NotImplementedError


def save_coco_folder(splits: dict[str, DetectionSplit], path: str | os.PathLike[str]) -> Path:
    """Write splits in the layout :func:`load_coco_folder` reads (PNG images; JSON written atomically).

    Args:
        splits: ``{"train": ..., "val": ...}``.
        path: the folder to create or fill.

    Returns:
        The folder's path.
    """
    root = Path(path)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        data = splits[split]
        for info, image in zip(data.coco["images"], data.images, strict=True):
            Image.fromarray(image).save(root / "images" / info["file_name"])
        write_json_atomically(copy.deepcopy(data.coco), root / "annotations" / f"{split}.json")
    return root


def write_json_atomically(doc: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``doc`` as indented JSON through a temporary file in the same folder and an atomic rename.

    Args:
        doc: a JSON-serialisable object.
        path: the file to write.

    Returns:
        The file's path.
    """

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2)
            handle.write("\n")

    return write_atomically(path, dump)  # 0644: results are meant to be shared, like the figures
