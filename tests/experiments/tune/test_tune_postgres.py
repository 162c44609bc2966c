"""Two ``balanced-l1 tune`` workers sharing one study in a real PostgreSQL server that the test starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pgserver = pytest.importorskip("pgserver")
pytest.importorskip("psycopg2")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
TINY = ["--batch-size", "2", "--train-images", "4", "--val-images", "3", "--image-size", "64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    # not under pytest's owner-only temporary folders: run as root, pgserver starts PostgreSQL as another user
    folder = Path(tempfile.mkdtemp(prefix="balanced-l1-pg-"))
    folder.chmod(0o755)
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        uri = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket folder>
        yield uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _command(out: Path, url: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "balanced_l1.cli", "tune", *TINY, "--arm-modules", "tests.experiments.tune.tune_arms",
            "--storage", url, "--heartbeat", "1", "--confirm", "0", "--out", str(out), *flags]  # fmt: skip


def _finished_here(out: Path) -> list[int]:
    """The numbers of the trials this worker finished (one log line each)."""
    return [int(n) for n in re.findall(r" trial (\d+) \[", (out / "log.txt").read_text())]


def test_two_workers_run_every_grid_point_exactly_once_and_write_no_password(tmp_path: Path, database: str) -> None:
    url = database.replace("postgres:@", "postgres:s3cret-pw@", 1)  # the server trusts local users: any password works
    flags = ("--study", "grid", "--sampler", "grid", "--arms", "smooth_l1,giou,l1", "--seeds", "0,1", "--iters", "2",
             "--pruner", "none")  # fmt: skip
    workers = [subprocess.Popen(_command(tmp_path / f"w{i}", url, *flags), env=ENV, stderr=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    printed = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], printed[0][1][-3000:] + printed[1][1][-3000:]
    assert not any("s3cret-pw" in text for pair in printed for text in pair)
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not any(b"s3cret-pw" in data for data in written)
    assert "postgres:***@" in (tmp_path / "w0" / "tune.json").read_text()
    numbers = _finished_here(tmp_path / "w0") + _finished_here(tmp_path / "w1")
    assert sorted(numbers) == list(range(6))
    trials = json.loads((tmp_path / "w0" / "tune.json").read_text())["trials"]
    points = sorted((t["arm"], t["seed"]) for t in trials)
    assert points == sorted((arm, seed) for arm in ("smooth_l1", "giou", "l1") for seed in (0, 1))
    assert all(t["state"] == "complete" for t in trials)


def test_a_worker_killed_mid_trial_has_its_trial_retried_by_the_other_and_the_budget_is_met(
    tmp_path: Path, database: str
) -> None:
    flags = ("--study", "search", "--space", "weighted_smooth_l1(loss_weight=0.5..2:log)", "--trials", "4",
             "--iters", "30", "--checkpoint-every", "2", "--pruner", "none")  # fmt: skip
    doomed = subprocess.Popen(_command(tmp_path / "a", database, *flags), env=ENV, stderr=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)  # fmt: skip
    survivor = subprocess.Popen(_command(tmp_path / "b", database, *flags), env=ENV, stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list((tmp_path / "a" / "checkpoints").glob("weighted*.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert survivor.wait(timeout=400) == 0, survivor.stderr.read()[-3000:] if survivor.stderr else ""
    trials = json.loads((tmp_path / "b" / "tune.json").read_text())["trials"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert sorted(t["role"] for t in complete) == ["baseline", "search", "search", "search", "search"]
    failed = [t for t in trials if t["state"] == "fail"]
    assert len(failed) == 1
    retry = next(t for t in complete if t["retry_of"] == failed[0]["number"])
    assert retry["number"] in _finished_here(tmp_path / "b") and retry["params"] == failed[0]["params"]
    assert len(trials) == 6 and len({t["number"] for t in trials}) == 6
    searched = [json.dumps(t["params"], sort_keys=True) for t in complete if t["role"] == "search"]
    assert len(set(searched)) == 4  # two workers draw different settings, not one seed's same first draws
