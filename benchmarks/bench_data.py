"""The data layer at scale: peak memory of a data pass, loading throughput, and validating a COCO-sized file.

Measured in one run, each case in a fresh Python process (so peak resident memory is that case's own):

* peak RSS of one pass of a ``DataLoader`` (0 workers, batches of 4, no model) over 150 and 1500 generated
  640x480 JPEG training images; the goal is that the larger set costs less than 300 MB more;
* images per second of that pass with 0 and with 2 workers;
* seconds (and the peak RSS it adds) to validate and clean a generated COCO-sized annotation file (118k images,
  860k annotations, COCO's fields and polygons, some zero-height and past-the-border boxes and crowd regions),
  beside ``json.loads`` of the same file alone as the baseline.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_data.py [--small 150] [--large 1500]
        [--coco-images 118000] [--coco-annotations 860000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 640, 480
CATEGORIES = [{"id": 1 + 2 * k, "name": f"class{k}"} for k in range(80)]


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process's memory map; getrusage's ru_maxrss would carry the parent's over exec
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_jpeg_set(folder: Path, count: int) -> Path:
    """Write ``count`` 640x480 JPEGs with a few boxes each, and their annotation file; return the file."""
    ann_file = folder / f"instances_{count}.json"
    if ann_file.exists():
        return ann_file
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, WIDTH)[None, :, None] * np.linspace(0.3, 1, HEIGHT)[:, None, None]
    images, annotations = [], []
    for index in range(count):
        name = f"{index:012d}.jpg"
        image = Image.fromarray((ramp * rng.uniform(60, 250, size=3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            w, h = (int(v) for v in rng.integers(20, 200, size=2))
            x, y = int(rng.integers(0, WIDTH - w)), int(rng.integers(0, HEIGHT - h))
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1, "bbox": [x, y, w, h]}
            )
        if not (images_dir / name).exists():  # the larger set starts with the images of the smaller one
            image.save(images_dir / name, quality=90)
        images.append({"id": index + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
    categories = [{"id": 1, "name": "box"}]
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def write_coco_sized_file(path: Path, num_images: int, num_annotations: int) -> Path:
    """Write an annotation file of COCO train2017's size, with COCO's fields, polygons and some quirks."""
    if path.exists():
        return path
    rng = np.random.default_rng(1)
    sizes = rng.integers(240, 641, size=(num_images, 2))
    owners = np.sort(rng.integers(0, num_images, size=num_annotations))
    images = [
        {"license": 1, "file_name": f"{i + 1:012d}.jpg", "coco_url": "", "height": int(h), "width": int(w),
         "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": i + 1}
        for i, (w, h) in enumerate(sizes)
    ]  # fmt: skip
    annotations = []
    xy = rng.uniform(0, 0.9, size=(num_annotations, 2))
    wh = rng.uniform(0.01, 1.0, size=(num_annotations, 2)) * (1 - xy) * 0.6
    for k in range(num_annotations):
        w_img, h_img = sizes[owners[k]]
        x, y = round(float(xy[k, 0] * w_img), 2), round(float(xy[k, 1] * h_img), 2)
        w, h = round(float(wh[k, 0] * w_img), 2), round(float(wh[k, 1] * h_img), 2)
        if k % 5000 == 0:
            h = 0.0  # COCO's zero-height boxes
        if k % 1000 == 1:
            w = round(float(w_img - x + 0.4), 2)  # a fraction of a pixel past the border
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        annotations.append(
            {"segmentation": [polygon], "area": w * h, "iscrowd": int(k % 100 == 0), "image_id": int(owners[k]) + 1,
             "bbox": [x, y, w, h], "category_id": CATEGORIES[k % 80]["id"], "id": k + 1}
        )  # fmt: skip
    doc = {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
    path.write_text(json.dumps(doc))
    return path


def _pass(ann_file: str, root: str, workers: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from balanced_l1.experiments.data.coco_data import DetectionDataset, load_coco_split

    torch.set_num_threads(1)
    dataset = DetectionDataset(load_coco_split(ann_file, root, "train"))
    loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=list)
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch)
    seconds = time.perf_counter() - start
    return {"images": seen, "seconds": seconds, "rss_mb": _peak_rss_mb()}


def _validate(ann_file: str, baseline: bool) -> dict[str, Any]:
    from balanced_l1.experiments.data.coco_annotations import read_coco_annotations

    before = _peak_rss_mb()  # after the imports (torch among them): the table shows what reading adds
    start = time.perf_counter()
    if baseline:
        json.loads(Path(ann_file).read_bytes())
        report: dict[str, int] = {}
    else:
        report = read_coco_annotations(ann_file).report
    return {"seconds": time.perf_counter() - start, "rss_mb": _peak_rss_mb() - before, "report": report}


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Parse the options, run every case in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=150)
    parser.add_argument("--large", type=int, default=1500)
    parser.add_argument("--coco-images", type=int, default=118_000)
    parser.add_argument("--coco-annotations", type=int, default=860_000)
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated data (kept for reruns)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = _pass(rest[0], rest[1], int(rest[2])) if kind == "pass" else _validate(rest[0], kind == "json")
        print(json.dumps(result))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating data under {work} ...", flush=True)
    small, large = (str(write_jpeg_set(work, n)) for n in (args.small, args.large))
    coco = str(write_coco_sized_file(work / "coco_sized.json", args.coco_images, args.coco_annotations))
    root = str(work / "images")
    rows = []
    passes = {n: _child("pass", f, root, "0") for n, f in ((args.small, small), (args.large, large))}
    for n, result in passes.items():
        rate = result["images"] / result["seconds"]
        rows.append((f"data pass, {n} JPEGs 640x480, 0 workers", f"{result['rss_mb']:.0f} MB", f"{rate:.0f} img/s"))
    two = _child("pass", large, root, "2")
    rows.append(
        (f"data pass, {args.large} JPEGs, 2 workers", "(main process)", f"{two['images'] / two['seconds']:.0f} img/s")
    )
    growth = passes[args.large]["rss_mb"] - passes[args.small]["rss_mb"]
    parse = _child("json", coco)
    check = _child("validate", coco)
    label = f"{args.coco_images} images, {args.coco_annotations} annotations"
    rows.append((f"json.loads only ({label})", f"+{parse['rss_mb']:.0f} MB", f"{parse['seconds']:.1f} s"))
    rows.append((f"validate + clean ({label})", f"+{check['rss_mb']:.0f} MB", f"{check['seconds']:.1f} s"))
    width = max(len(r[0]) for r in rows)
    print(f"{'case'.ljust(width)}  {'peak RSS':>14}  {'speed':>10}")
    for name, rss, speed in rows:
        print(f"{name.ljust(width)}  {rss:>14}  {speed:>10}")
    print(f"\nRSS growth from {args.small} to {args.large} images: {growth:+.0f} MB (goal < 300 MB)")
    print(f"2 workers vs 0 workers: {passes[args.large]['seconds'] / two['seconds']:.2f}x the throughput")
    print(f"validation vs json.loads alone: {check['seconds'] / parse['seconds']:.2f}x the time")
    print(f"cleaning: {json.dumps({k: v for k, v in check['report'].items() if v})}")


if __name__ == "__main__":
    main()
