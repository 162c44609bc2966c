"""``balanced-l1 tune`` under ``torchrun --nproc_per_node 2`` (gloo): every rank trains, rank 0 alone talks to the
study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna_integration")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def test_a_study_under_two_ranks_trains_each_trial_with_both_and_records_it_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "balanced_l1.cli", "tune", "--iters", "4", "--batch-size", "4", "--train-images", "8",
        "--val-images", "3", "--image-size", "64", "--eval-every", "2",
        "--arm-modules", "tests.experiments.tune.tune_arms",
        "--space", "weighted_smooth_l1(loss_weight=0.5..2:log),blind",
        "--trials", "2", "--confirm", "0", "--sampler-seed", "1", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = json.loads((out / "tune.json").read_text())["trials"]
    assert [t["role"] for t in trials] == ["baseline", "search", "search"]
    assert all(t["state"] in ("complete", "pruned") for t in trials)
    assert done.stdout.count("trial 0 [baseline]") == 1  # rank 0 alone reports
    run = json.loads((out / "runs" / "smooth_l1_seed0.json").read_text())
    assert run["fingerprint"]["seed"] == 0 and len(run["history"]) == 4
