"""Two gloo processes each predict their shard of the held-out split; rank 0 scores once, as one process would."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from balanced_l1.experiments.run.distributed import DistContext
from balanced_l1.experiments.run.evaluate import evaluate_detector, predict

pytestmark = pytest.mark.slow
WORLD_SIZE = 2
VAL_IMAGES = 7  # 4 batches of 2: rank 0 takes 2 batches, rank 1 two, the last one short


def _model_and_split() -> tuple[torch.nn.Module, Any]:
    from balanced_l1.detection.models import build_small_faster_rcnn
    from balanced_l1.experiments.data.synthetic import make_synthetic_dataset

    torch.manual_seed(0)
    model = build_small_faster_rcnn(3, image_size=64)
    model.roi_heads.score_thresh = 0.0  # an untrained model: keep every detection, so there is much to gather
    return model, make_synthetic_dataset(2, VAL_IMAGES, image_size=64, seed=5)["val"]


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60)
    )
    try:
        model, split = _model_and_split()
        ctx = DistContext(rank, WORLD_SIZE, torch.device("cpu"))
        shard = predict(model, split, device=ctx.device, batch_size=2, rank=rank, world_size=WORLD_SIZE)
        metrics = evaluate_detector(model, split, ctx=ctx, batch_size=2, show_progress=False)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "shard": shard}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("sharded")
    mp.set_forkserver_preload(["torch", "torch.distributed", "torchvision"])
    mp.start_processes(
        _worker, args=(f"file://{out_dir / 'rendezvous'}", str(out_dir)), nprocs=WORLD_SIZE, start_method="forkserver"
    )
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def test_only_rank_0_scores(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["metrics"] is not None and ranks[1]["metrics"] is None


def test_shards_are_disjoint_and_together_are_one_process_detections(ranks: list[dict[str, Any]]) -> None:
    model, split = _model_and_split()
    whole = json.loads(json.dumps(predict(model, split, device=torch.device("cpu"), batch_size=2)))
    images = [{d["image_id"] for d in r["shard"]} for r in ranks]
    assert images[0] and images[1] and not images[0] & images[1]
    position = {int(info["id"]): i for i, info in enumerate(split.coco["images"])}
    merged = sorted(ranks[0]["shard"] + ranks[1]["shard"], key=lambda d: position[d["image_id"]])
    assert len(whole) > 100 and merged == whole


def test_sharded_metrics_equal_one_process_metrics_exactly(ranks: list[dict[str, Any]]) -> None:
    model, split = _model_and_split()
    alone = evaluate_detector(model, split, device=torch.device("cpu"), batch_size=2, show_progress=False)
    alone = json.loads(json.dumps(alone))
    assert ranks[0]["metrics"] == alone
