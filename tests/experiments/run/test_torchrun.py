"""Under ``torchrun --nproc_per_node 2`` compare trains with DDP (gloo) and only rank 0 reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from balanced_l1.experiments.data.loader import global_batch

pytestmark = pytest.mark.slow


def test_ranks_split_each_global_batch_without_overlap_like_distributed_sampler() -> None:
    batch = global_batch(seed=3, iteration=5, batch_size=6, num_images=10)
    shards = [batch[rank::2] for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(batch) and len(shards[0]) == len(shards[1]) == 3


def test_data_order_is_an_epoch_permutation_fixed_by_the_seed() -> None:
    epoch = [i for it in range(5) for i in global_batch(1, it, 2, 10)]
    assert sorted(epoch) == list(range(10))
    assert epoch != [i for it in range(5) for i in global_batch(2, it, 2, 10)]


def test_two_process_compare_trains_with_ddp_and_writes_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "balanced_l1.cli", "compare", "--iters", "2", "--batch-size", "4", "--train-images", "8",
        "--val-images", "2", "--image-size", "64", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["world_size"] == 2 and list(results["arms"]) == ["smooth_l1", "balanced_l1"]
    # the three tables (AP, gradient balance, the balance predicted from the baseline) come from rank 0 only
    assert done.stdout.count("| arm ") == 3
    assert done.stdout.count("gradient balance, second half of training") == 1
    assert done.stderr.count("[smooth_l1 seed 0] started") == 1  # so do the log lines (no bars off a terminal)


def test_global_batch_not_divisible_by_the_processes_is_refused(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "balanced_l1.cli", "compare", "--batch-size", "3", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode != 0  # each rank exits 2; torchrun itself reports a failed worker as 1
    assert "batch_size 3 must be divisible by the number of processes 2" in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()
