"""Reading a COCO detection annotation file: validate every field, then clean what real COCO contains.

Validation refuses (:class:`DataError` naming the file and the reason) a file that is missing, not a regular file
(a FIFO, a device, a folder: refused by kind before it is opened), larger than :data:`MAX_ANNOTATION_BYTES`, not
JSON, nested too deep, holding an integer of more digits than Python converts, or whose ``images`` (integer ``id``,
relative ``file_name`` that a file system can name, integer ``width`` and ``height`` in ``[1, MAX_IMAGE_SIDE]``),
``categories`` (integer ``id``, string ``name``) or ``annotations`` (known ``image_id`` and ``category_id``,
``bbox`` of four finite numbers with width and height >= 0, optional positive integer ``id``, finite ``area`` >= 0,
``iscrowd`` 0 or 1) are ill-formed, that declares an image of more than
:data:`~balanced_l1.experiments.data.images.MAX_IMAGE_PIXELS` pixels, or that keeps more than
:data:`MAX_BOXES_PER_IMAGE` boxes on one image. Every id must fit in a signed 64-bit integer (the ``int64`` arrays and
tensors that carry them), as COCO's do. Cleaning then does what torchvision's detection references and mmdetection do
with real COCO, and counts it:

* a box of zero width or height is dropped (``degenerate_boxes_dropped``);
* a box past the border is clipped to the image (``boxes_clipped``); one left empty by clipping is dropped
  (``boxes_outside_image_dropped``);
* crowd regions (``iscrowd`` 1) are kept for evaluation and left out of training (``crowd_regions``);
* images without annotations are kept (``images_without_annotations``).

Annotations missing ``id``, ``area`` or ``iscrowd`` get COCO's defaults (fresh ids after the largest given one, the
box's area, 0). The cleaned dictionary keeps per image ``id``, ``file_name``, ``width``, ``height``; per annotation
``id``, ``image_id``, ``category_id``, ``bbox``, ``area``, ``iscrowd`` (segmentations and other fields are not
needed for box metrics and are not kept); categories as given.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balanced_l1._files import UnreadableFileError, format_size, read_regular_file
from balanced_l1.experiments.data.data_errors import DataError
from balanced_l1.experiments.data.images import MAX_IMAGE_PIXELS, file_name_problem
from balanced_l1.params import check_number

_KEPT_FIELDS = frozenset(("id", "image_id", "category_id", "bbox", "area", "iscrowd"))

MAX_ANNOTATION_BYTES = 4 << 30
"""The largest annotation file read: 4 GiB. COCO's largest, ``instances_train2017.json``, is 448 MB (about a tenth
of it); parsed, a JSON file takes several times its size in memory, so a larger file would exhaust a typical
machine before it were read, and is much more likely a wrong path (an archive, a disk image) than annotations."""

MAX_IMAGE_SIDE = 1 << 20
"""The largest ``width`` or ``height`` accepted: 1048576 pixels. JPEG's largest side is 65535; a side of 2**20 is
already over Pillow's decompression-bomb limit (about 89 million pixels) for any image over 85 pixels across."""

MAX_BOXES_PER_IMAGE = 1000
"""The most boxes kept on one image: 1000. COCO's images hold about a hundred boxes at most; training compares
every box with every anchor and proposal of its image (an IoU matrix of boxes x anchors, about 200 000 anchors for
an 800 x 1333 image with a feature pyramid), so 1000 boxes already take about 800 MB there, and the 300 000 boxes of
one malformed image would take hundreds of GB."""

_INT64 = (-(1 << 63), (1 << 63) - 1)
_WHY_LIMIT = f"COCO's train2017 annotations are {format_size(448 * 10**6)}; see MAX_ANNOTATION_BYTES"


@dataclass(frozen=True)
class CleanAnnotations:
    """The result of :func:`read_coco_annotations`.

    Attributes:
        coco: the cleaned COCO dictionary (``images``, ``annotations``, ``categories``).
        report: counts of what cleaning found and did.
        sha256: the hex SHA-256 of the file's bytes.
    """

    coco: dict[str, Any]
    report: dict[str, int]
    sha256: str


def _is_int(value: object, minimum: int | None = None, maximum: int | None = None) -> bool:
    """Whether a JSON value is an integer (``true`` is not) in ``[minimum, maximum]`` and in the int64 range."""
    try:
        check_number("value", value, minimum=minimum, maximum=maximum, integer=True)
    except (TypeError, ValueError):
        return False
    return _INT64[0] <= value <= _INT64[1]  # type: ignore[operator]


def _is_number(value: object, minimum: float | None = None) -> bool:
    """Whether a JSON value is a finite number (``true`` is not; NaN and Infinity are not) of at least ``minimum``."""
    try:
        check_number("value", value, minimum=minimum)
    except (TypeError, ValueError):
        return False
    return True


def _short(value: object, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters for a message (a field may hold a 4000-digit integer)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _require_list(doc: dict[str, Any], key: str, where: Path) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise DataError(f"{where}: key {key!r} must be a list, got {type(value).__name__}")
    return value


def _check_categories(categories: list[Any], where: Path) -> list[dict[str, Any]]:
    if not categories:
        raise DataError(f"{where}: 'categories' is empty; at least one category is needed")
    ids: set[int] = set()
    for cat in categories:
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise DataError(
                f"{where}: every category needs an integer 'id' (64-bit) and a string 'name', got {_short(cat)}"
            )
        if cat["id"] in ids:
            raise DataError(f"{where}: category id {cat['id']} appears twice")
        ids.add(cat["id"])
    return [dict(cat) for cat in categories]


def _check_images(images: list[Any], where: Path) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for info in images:
        if not isinstance(info, dict) or not _is_int(info.get("id")) or not isinstance(info.get("file_name"), str):
            raise DataError(
                f"{where}: every image needs an integer 'id' (64-bit) and a string 'file_name', got {_short(info)}"
            )
        for key in ("width", "height"):
            if not _is_int(info.get(key), minimum=1, maximum=MAX_IMAGE_SIDE):
                raise DataError(
                    f"{where}: image {info['file_name']!r} needs a positive integer {key!r} (at most "
                    f"{MAX_IMAGE_SIDE} pixels), got {_short(info.get(key))}"
                )
        if info["width"] * info["height"] > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{where}: image {info['id']} declares {info['width']}x{info['height']} = "
                f"{info['width'] * info['height']} pixels, over the limit of {MAX_IMAGE_PIXELS} pixels (Pillow's "
                "decompression-bomb limit: an image that large decodes to over 256 MiB)"
            )
        if info["id"] in by_id:
            raise DataError(f"{where}: image id {info['id']} appears twice")
        problem = file_name_problem(info["file_name"])
        if problem is not None:
            raise DataError(f"{where}: image {info['id']} has file_name {info['file_name']!r} that {problem}")
        by_id[info["id"]] = {k: info[k] for k in ("id", "file_name", "width", "height")}
    return by_id


def _check_annotation(ann: Any, index: int, images: dict[int, dict[str, Any]], cats: set[int], where: Path) -> None:
    if not isinstance(ann, dict):
        raise DataError(f"{where}: annotation #{index} must be an object, got {_short(ann)}")
    image_id = ann.get("image_id")
    if not _is_int(image_id) or image_id not in images:
        raise DataError(f"{where}: annotation #{index} refers to unknown image_id {_short(image_id)}")
    category_id = ann.get("category_id")
    if not _is_int(category_id) or category_id not in cats:
        raise DataError(
            f"{where}: annotation #{index} has unknown category_id {_short(category_id)}; known: {_short(sorted(cats))}"
        )
    bbox = ann.get("bbox")
    if type(bbox) is not list or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DataError(
            f"{where}: annotation #{index} needs 'bbox' = [x, y, width, height] of 4 finite numbers, got {_short(bbox)}"
        )
    if bbox[2] < 0 or bbox[3] < 0:
        raise DataError(
            f"{where}: annotation #{index} on {images[image_id]['file_name']!r} has box {bbox} with a negative "
            "size: width and height must be >= 0 (zero-size boxes are dropped)"
        )
    if "id" in ann and not _is_int(ann["id"], minimum=1):
        # pycocotools marks an unmatched box with id 0, so an annotation with id 0 could never be matched
        raise DataError(
            f"{where}: annotation #{index} needs a positive integer 'id' if given (at most 2**63 - 1), "
            f"got {_short(ann['id'])}"
        )
    if "area" in ann and not _is_number(ann["area"], minimum=0.0):
        raise DataError(f"{where}: annotation #{index} needs a finite 'area' >= 0 if given, got {_short(ann['area'])}")
    if "iscrowd" in ann and not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
        raise DataError(f"{where}: annotation #{index} needs 'iscrowd' 0 or 1 if given, got {_short(ann['iscrowd'])}")


def _clip(bbox: list[float], width: int, height: int) -> list[float] | None:
    x, y, w, h = bbox
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return bbox  # inside: kept exactly (x + w - x need not equal w in floating point)
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def _parse(data: bytes, where: Path) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError as err:  # also UnicodeDecodeError, and an integer of more digits than Python converts
        raise DataError(f"{where}: not a readable JSON file ({err})") from None
    except RecursionError:
        raise DataError(f"{where}: not a readable JSON file (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise DataError(f"{where}: top level must be a JSON object, got {type(doc).__name__}")
    return doc


def _check_boxes_per_image(kept: list[tuple[dict[str, Any], list[float]]], where: Path) -> None:
    per_image: dict[int, int] = {}
    for ann, _ in kept:
        count = per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        if count > MAX_BOXES_PER_IMAGE:
            raise DataError(
                f"{where}: image {ann['image_id']} has more than {MAX_BOXES_PER_IMAGE} boxes (the limit per image: "
                "training compares every box with every anchor of its image, so memory grows with boxes x anchors; "
                "see MAX_BOXES_PER_IMAGE)"
            )


def _clean(
    raw: list[Any], images: dict[int, dict[str, Any]], cats: set[int], where: Path
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    counts = dict.fromkeys(("degenerate_boxes_dropped", "boxes_outside_image_dropped", "boxes_clipped"), 0)
    given_ids: set[int] = set()
    kept: list[tuple[dict[str, Any], list[float]]] = []
    for index, ann in enumerate(raw):
        _check_annotation(ann, index, images, cats, where)
        if "id" in ann:
            if ann["id"] in given_ids:
                raise DataError(f"{where}: annotation id {ann['id']} appears twice")
            given_ids.add(ann["id"])
        bbox = ann["bbox"]
        if bbox[2] == 0 or bbox[3] == 0:
            counts["degenerate_boxes_dropped"] += 1
            continue
        info = images[ann["image_id"]]
        clipped = _clip(bbox, info["width"], info["height"])
        if clipped is None:
            counts["boxes_outside_image_dropped"] += 1
            continue
        if clipped is not bbox:
            counts["boxes_clipped"] += 1
        kept.append((ann, clipped))
    _check_boxes_per_image(kept, where)
    next_id = max(given_ids, default=0) + 1
    annotations = []
    for ann, bbox in kept:  # reuse the parsed dictionaries: a COCO-sized file is then held about once
        for key in [k for k in ann if k not in _KEPT_FIELDS]:
            del ann[key]
        if "id" not in ann:
            if next_id > _INT64[1]:
                raise DataError(f"{where}: no 64-bit id is left after the largest given annotation id {next_id - 1}")
            ann["id"], next_id = next_id, next_id + 1
        ann["bbox"] = bbox
        ann.setdefault("area", bbox[2] * bbox[3])
        ann["iscrowd"] = int(ann.get("iscrowd", 0))
        annotations.append(ann)
    return annotations, counts


def read_coco_annotations(path: str | os.PathLike[str]) -> CleanAnnotations:
    """Read, validate and clean a COCO detection annotation file (rules in the module docstring).

    Args:
        path: the JSON file, e.g. ``annotations/instances_train2017.json``.

    Returns:
        The cleaned annotations, the counts of what cleaning did and the file's SHA-256.

    Raises:
        DataError: naming the file and the reason, for a missing, unreadable or malformed file or field, a path
            that is not a regular file (refused before it is opened) or a file over :data:`MAX_ANNOTATION_BYTES`, an
            image ``file_name`` that is absolute, escapes with ``..`` or cannot be encoded as a file name, an image
            over the pixel limit or an image with too many boxes.
    """
    where = Path(path)
    try:
        data = read_regular_file(where, MAX_ANNOTATION_BYTES, "annotation file", why=_WHY_LIMIT)
    except UnreadableFileError as err:
        raise DataError(str(err)) from None
    doc = _parse(data, where)
    categories = _check_categories(_require_list(doc, "categories", where), where)
    cat_ids = {cat["id"] for cat in categories}
    images = _check_images(_require_list(doc, "images", where), where)
    raw = _require_list(doc, "annotations", where)
    del doc
    annotations, counts = _clean(raw, images, cat_ids, where)
    annotated = {ann["image_id"] for ann in annotations}
    trained = {ann["image_id"] for ann in annotations if not ann["iscrowd"]}
    crowd = sum(ann["iscrowd"] for ann in annotations)
    used = {ann["category_id"] for ann in annotations}
    report = {
        "images": len(images),
        "annotations": len(raw),
        **counts,
        "crowd_regions": crowd,
        "training_boxes": len(annotations) - crowd,
        "images_without_annotations": len(images) - len(annotated),
        "images_without_training_boxes": len(images) - len(trained),
        "categories": len(categories),
        "unused_categories": len(cat_ids - used),
    }
    coco = {"images": list(images.values()), "annotations": annotations, "categories": categories}
    return CleanAnnotations(coco, report, hashlib.sha256(data).hexdigest())
