"""A run killed with SIGKILL mid-training resumes with --resume to exactly the uninterrupted result."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balanced_l1.cli import main

pytestmark = pytest.mark.slow

SETTINGS = [
    "compare", "--arms", "smooth_l1,balanced_l1", "--iters", "10", "--checkpoint-every", "2", "--warmup-iters", "4",
    "--batch-size", "2", "--train-images", "6", "--val-images", "3", "--image-size", "64", "--hflip", "0.5",
    "--balance-every", "3",
]  # fmt: skip
WORKERS = ["--workers", "2"]


def _quiet_main(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(args)


def _kill_after_first_checkpoint(out: Path) -> None:
    command = [sys.executable, "-m", "balanced_l1.cli", *SETTINGS, *WORKERS, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoints" / "balanced_l1_seed0.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the run never wrote a checkpoint"
    time.sleep(1.0)  # the side processes (--jobs 2) notice that their parent is gone within 0.2 s and stop
    stamps = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    time.sleep(1.5)
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == stamps, "a run outlived its parent"


def test_resume_with_workers_after_sigkill_reaches_the_uninterrupted_metrics_exactly(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    _kill_after_first_checkpoint(killed)
    assert not (killed / "results.json").exists()

    assert _quiet_main([*SETTINGS, *WORKERS, "--out", str(killed), "--resume"]) == 0
    assert _quiet_main([*SETTINGS, "--out", str(tmp_path / "whole")]) == 0  # no workers: the same numbers

    resumed = json.loads((killed / "results.json").read_text())
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert resumed["arms"] == whole["arms"]
    for arm in ("smooth_l1", "balanced_l1"):
        records = [json.loads((d / "runs" / f"{arm}_seed0.json").read_text()) for d in (killed, tmp_path / "whole")]
        assert records[0]["history"] == records[1]["history"]
        # the gradient-balance series too, the box/classification ratio measured at the same iterations
        assert records[0]["gradient_balance"] == records[1]["gradient_balance"]
        measured = [r["roi_heads"]["box_cls_gradient_ratio"] is not None for r in records[0]["gradient_balance"]]
        assert measured == [i % 3 == 0 for i in range(10)]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    tiny = [*SETTINGS[:3], "--iters", "2", "--checkpoint-every", "1", *SETTINGS[9:-4], "--out", str(out)]
    assert _quiet_main(tiny) == 0
    (out / "runs" / "smooth_l1_seed0.json").unlink()
    (out / "results.json").unlink()
    code = main([*tiny, "--resume", "--lr", "0.5"])
    assert code == 1
    assert "smooth_l1_seed0.pt: written by a run with other settings" in capsys.readouterr().err
    assert not (out / "results.json").exists()
