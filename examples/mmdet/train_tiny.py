"""Train the Faster R-CNN of ``faster_rcnn_r18_balanced_l1_tiny.py`` with mmdetection's runner.

``python examples/mmdet/train_tiny.py --data-root data/tiny_coco --work-dir work_dirs/tiny`` writes
the tiny set (make_tiny_coco.py) when ``--data-root`` has none, then trains. ``--mmdet-loss`` trains
with mmdetection's own ``BalancedL1Loss`` instead of the plugin's, for comparison; ``--iters`` and
``--beta`` change the config's 20 iterations and ``beta = 1``. Needs mmdetection 3.3 with a full mmcv
(its compiled ops): see docs/mmdetection.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "faster_rcnn_r18_balanced_l1_tiny.py"


def load_config(
    data_root: str | Path,
    work_dir: str | Path,
    iters: int | None = None,
    loss_bbox: dict | None = None,
    config: str | Path = CONFIG,
):
    """The example config, with its data root, work dir, iteration count and box loss replaced."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    cfg.train_dataloader.dataset.data_root = str(data_root).rstrip("/") + "/"
    cfg.work_dir = str(work_dir)
    if iters is not None:
        cfg.train_cfg.max_iters = iters
    if loss_bbox is not None:
        cfg.model.roi_head.bbox_head.loss_bbox = loss_bbox
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data/tiny_coco")
    parser.add_argument("--work-dir", default="work_dirs/faster_rcnn_r18_balanced_l1_tiny")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--beta", type=float, default=None)
    parser.add_argument("--mmdet-loss", action="store_true", help="mmdetection's BalancedL1Loss instead")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from make_tiny_coco import make_tiny_coco
    from mmengine.runner import Runner

    if not (Path(args.data_root) / "annotations.json").exists():
        make_tiny_coco(args.data_root)
    cfg = load_config(args.data_root, args.work_dir, args.iters)
    loss_bbox = cfg.model.roi_head.bbox_head.loss_bbox
    if args.mmdet_loss:
        loss_bbox.type = "mmdet.BalancedL1Loss"
    if args.beta is not None:
        loss_bbox.beta = args.beta
    Runner.from_cfg(cfg).train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
