"""``--jobs N``: a run whose process dies without a report is named, with how it ended and what to do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from balanced_l1.cli import main
from balanced_l1.experiments import compare
from balanced_l1.experiments.config import resolve
from balanced_l1.experiments.run.parallel import RunFailedError, run_in_processes

_KILLS_ITS_WORKER = """
import multiprocessing, os, signal
if multiprocessing.current_process().name != "MainProcess":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_killed_by_sigkill_is_named_with_the_signal_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "kills_its_worker.py").write_text(_KILLS_ITS_WORKER)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])  # a spawned worker starts with the parent's path
    config = resolve(
        [{"arm_modules": ("kills_its_worker",), "train_images": 2, "val_images": 2, "out": str(tmp_path / "out")}]
    )
    with pytest.raises(RunFailedError) as info:
        run_in_processes(config, [("smooth_l1", 3)], jobs=1)
    message = str(info.value)
    assert message.startswith("the run smooth_l1 seed 3 was killed by signal SIGKILL before it could report why")
    assert "run the same command with --resume" in message and 'if __name__ == "__main__":' in message


def test_compare_reports_a_failed_worker_with_exit_1_and_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(config: object) -> None:
        raise RunFailedError("the run balanced_l1 seed 1 was killed by signal SIGKILL before it could report why")

    monkeypatch.setattr(compare, "run_compare", fail)
    assert main(["compare", "--jobs", "2", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == (
        "balanced-l1 compare: error: the run balanced_l1 seed 1 was killed by signal SIGKILL before it could "
        "report why\n"
    )
