"""Detection data in COCO format: a split is an annotation file plus an image folder, read lazily.

:func:`load_coco_split` takes what torchvision's ``CocoDetection`` takes (``annFile`` and ``root``), for instance
``annotations/instances_train2017.json`` with ``train2017/``. It validates and cleans the whole annotation file
(see :mod:`balanced_l1.experiments.data.coco_annotations`: zero-size boxes dropped, boxes clipped to the image, crowd
regions kept for evaluation only, images without annotations kept) and decodes no image: each image is read from
its file when the training or evaluation loop asks for it (see :mod:`balanced_l1.experiments.data.images` for which
files are refused), so memory grows with the annotations, not with the images.

:func:`load_coco_folder` reads the older single-folder layout, which :func:`save_coco_folder` writes::

    PATH/annotations/train.json    annotations of the training split
    PATH/annotations/val.json      annotations of the held-out split
    PATH/images/<file_name>        every image named by either file

Symbolic links: a path given (``ann_file``, ``image_root``, the folder ``PATH``) is used as given, links and all.
What is found inside ``PATH`` (``annotations/``, ``images/`` and the two annotation files) may be a symbolic link
only if it resolves to a place inside ``PATH``, unless ``follow_symlinks`` (``--follow-symlinks``) allows links
that lead out of it. Inside an image folder, images and their subfolders may not be links at all without
``follow_symlinks`` (see :mod:`balanced_l1.experiments.data.images`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from balanced_l1._files import link_leaving, write_json_atomically
from balanced_l1.experiments.data.coco_annotations import read_coco_annotations
from balanced_l1.experiments.data.data_errors import DataError, ImageReadError
from balanced_l1.experiments.data.datasets import DetectionDataset, SplitSamples
from balanced_l1.experiments.data.images import FileImages
from balanced_l1.experiments.data.split import DetectionSplit

__all__ = [
    "SPLITS",
    "DataError",
    "DetectionDataset",
    "ImageReadError",
    "format_data_report",
    "load_coco_dataset",
    "load_coco_folder",
    "load_coco_split",
    "save_coco_folder",
]

SPLITS = ("train", "val")

_REPORT_ROWS = {
    "images": "images",
    "images_without_annotations": "  without annotations (kept)",
    "images_without_training_boxes": "  without training boxes (negatives)",
    "annotations": "annotations in the file",
    "degenerate_boxes_dropped": "  zero width or height: dropped",
    "boxes_outside_image_dropped": "  wholly outside the image: dropped",
    "boxes_clipped": "  past the border: clipped",
    "crowd_regions": "  crowd regions (evaluation only)",
    "training_boxes": "  training boxes",
    "categories": "categories",
    "unused_categories": "  without annotations",
}


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def load_coco_split(
    ann_file: str | os.PathLike[str], image_root: str | os.PathLike[str], name: str, *, follow_symlinks: bool = False
) -> DetectionSplit:
    """Validate and clean an annotation file, and serve its images lazily from ``image_root``.

    Args:
        ann_file: the COCO annotation file.
        image_root: the folder that ``file_name`` s are relative to.
        name: the split's name.
        follow_symlinks: allow symbolic links among the images (also ones leading outside ``image_root``).

    Returns:
        The split. No image is opened here; a missing or bad image raises :class:`ImageReadError` when read.

    Raises:
        DataError: naming the file and the reason (see :func:`~balanced_l1.experiments.data.coco_annotations.
            read_coco_annotations`), or for an image folder that does not exist.
    """
    root = Path(image_root)
    if not root.is_dir():
        found = "is not a folder" if os.path.lexists(root) else "not found"
        raise DataError(f"{root}: image folder {found} (the images of {ann_file})")
    clean = read_coco_annotations(ann_file)
    infos = clean.coco["images"]
    images = FileImages(
        str(root),
        tuple(info["file_name"] for info in infos),
        np.array([(info["width"], info["height"]) for info in infos], dtype=np.int64).reshape(-1, 2),
        follow_symlinks,
    )
    fingerprint = _fingerprint("coco", clean.sha256, str(root.resolve()), f"follow_symlinks={follow_symlinks}")
    return DetectionSplit(name, clean.coco, SplitSamples.from_coco(clean.coco, images), clean.report, fingerprint)


def _check_pair(train: DetectionSplit, val: DetectionSplit, train_ann: Path, val_ann: Path) -> None:
    train_cats = sorted((c["id"], c["name"]) for c in train.coco["categories"])
    if sorted((c["id"], c["name"]) for c in val.coco["categories"]) != train_cats:
        raise DataError(f"{val_ann}: categories differ from {train_ann.name}'s {train_cats}")
    if not len(train):
        raise DataError(f"{train_ann}: the training split has no images")
    if not val.coco["annotations"]:
        raise DataError(f"{val_ann}: the held-out split has no annotations to score")
    if not any(not ann["iscrowd"] for ann in val.coco["annotations"]):
        raise DataError(
            f"{val_ann}: every annotation of the held-out split is a crowd region, which COCO's metrics ignore; "
            "there is nothing to score"
        )


def load_coco_dataset(
    train_ann: str | os.PathLike[str],
    train_root: str | os.PathLike[str],
    val_ann: str | os.PathLike[str],
    val_root: str | os.PathLike[str],
    *,
    follow_symlinks: bool = False,
) -> dict[str, DetectionSplit]:
    """Load a training and a held-out split (see :func:`load_coco_split`) and check that they fit together.

    Args:
        train_ann: the training annotation file.
        train_root: the training images' folder.
        val_ann: the held-out annotation file.
        val_root: the held-out images' folder.
        follow_symlinks: allow symbolic links among the images.

    Returns:
        ``{"train": DetectionSplit, "val": DetectionSplit}``.

    Raises:
        DataError: for a problem in either file, categories that differ between them, a training split without
            images, or a held-out split without annotations or with only crowd regions.
    """
    splits = {
        "train": load_coco_split(train_ann, train_root, "train", follow_symlinks=follow_symlinks),
        "val": load_coco_split(val_ann, val_root, "val", follow_symlinks=follow_symlinks),
    }
    _check_pair(splits["train"], splits["val"], Path(train_ann), Path(val_ann))
    return splits


def load_coco_folder(path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> dict[str, DetectionSplit]:
    """Load the single-folder layout of the module docstring (see :func:`load_coco_dataset`).

    ``annotations/``, ``images/`` and the annotation files may be symbolic links that stay inside ``path``;
    one that leads out of it is refused unless ``follow_symlinks``.

    Args:
        path: the folder holding ``annotations/{train,val}.json`` and ``images/``.
        follow_symlinks: allow symbolic links among the images, and ones that lead out of ``path``.

    Returns:
        ``{"train": DetectionSplit, "val": DetectionSplit}``.

    Raises:
        DataError: for a missing folder, a link out of ``path`` without ``follow_symlinks``, or as
            :func:`load_coco_dataset`.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    ann = root / "annotations"
    images = root / "images"
    for split in SPLITS:
        if not os.path.lexists(ann / f"{split}.json"):
            raise DataError(
                f"{ann / f'{split}.json'}: annotation file not found "
                "(expected layout: PATH/annotations/{train,val}.json and PATH/images/)"
            )
    for entry in (ann, images, *(ann / f"{split}.json" for split in SPLITS)):
        target = None if follow_symlinks else link_leaving(root, entry)
        if target is not None:
            raise DataError(
                f"{entry}: a symbolic link that leads out of the data folder {root} (to {target}); links out of "
                "it are refused unless you allow them (--follow-symlinks, follow_symlinks=True)"
            )
    return load_coco_dataset(ann / "train.json", images, ann / "val.json", images, follow_symlinks=follow_symlinks)


def format_data_report(splits: dict[str, DetectionSplit]) -> str:
    """The counts of what validation and cleaning did, one column per split, to print before training.

    Args:
        splits: e.g. ``{"train": ..., "val": ...}``.

    Returns:
        A table as text (no trailing newline).
    """
    keys = [k for k in _REPORT_ROWS if any(k in s.report for s in splits.values())]
    keys += sorted({k for s in splits.values() for k in s.report} - set(keys))
    labels = [_REPORT_ROWS.get(k, k.replace("_", " ")) for k in keys]
    width = max(len("data"), *(len(label) for label in labels))
    columns = [max(len(name), *(len(str(s.report.get(k, "-"))) for k in keys)) for name, s in splits.items()]
    lines = ["  ".join(["data".ljust(width), *(n.rjust(c) for n, c in zip(splits, columns, strict=True))])]
    for key, label in zip(keys, labels, strict=True):
        cells = (str(s.report.get(key, "-")).rjust(c) for s, c in zip(splits.values(), columns, strict=True))
        lines.append("  ".join([label.ljust(width), *cells]))
    return "\n".join(lines)


def save_coco_folder(splits: dict[str, DetectionSplit], path: str | os.PathLike[str]) -> Path:
    """Write splits in the layout :func:`load_coco_folder` reads (PNG images; JSON written atomically).

    Args:
        splits: ``{"train": ..., "val": ...}``; every image is read once and written as the file its ``coco``
            names (the ``file_name`` s of the two splits must differ).
        path: the folder to create or fill.

    Returns:
        The folder's path.
    """
    root = Path(path)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        data = splits[split]
        for index, info in enumerate(data.coco["images"]):
            Image.fromarray(data.load_image(index)).save(root / "images" / info["file_name"])
        write_json_atomically(data.coco, root / "annotations" / f"{split}.json")
    return root
