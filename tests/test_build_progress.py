"""The mmcv build says what it is doing: a line before it starts and one every minute, on pytest's terminal.

Tested with fast fake commands; the real build (tools/build_mmcv.py, 15 to 40 minutes) is never started here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests._build_mmcv_tool import load_build_tool

ROOT = Path(__file__).resolve().parents[1]
SLEEP = [sys.executable, "-c", "import time; time.sleep(0.6)"]


def test_a_long_command_is_reported_every_interval_while_it_runs(tmp_path: Path) -> None:
    lines: list[str] = []
    log = tmp_path / "build.log"
    load_build_tool().run_logged(SLEEP, log, doing="building fake", report=lines.append, every=0.15)
    assert len(lines) >= 2
    expected = rf"building fake: still running after \d+ min \(log: {re.escape(str(log))}\)"
    assert all(re.fullmatch(expected, line) for line in lines), lines
    assert log.read_text().startswith(f"\n$ {' '.join(SLEEP)}\n")


def test_a_command_that_finishes_first_is_not_reported(tmp_path: Path) -> None:
    lines: list[str] = []
    load_build_tool().run_logged(
        [sys.executable, "-c", "pass"], tmp_path / "log", doing="quick", report=lines.append, every=30
    )
    assert lines == []


def test_a_failing_command_raises_with_the_log_tail(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import sys; print('compiler said no'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)failed \(3\); log .*\ncompiler said no\n"):
        load_build_tool().run_logged(failing, tmp_path / "log", doing="building fake", report=None)


def test_a_cached_wheel_is_returned_without_a_word(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = load_build_tool()
    monkeypatch.setenv("BALANCED_L1_CACHE", str(tmp_path))
    wheel = tool.build_dir() / f"mmcv-{tool.MMCV_VERSION}-cp311-cp311-linux_x86_64.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"")
    lines: list[str] = []
    assert tool.build_wheel(report=lines.append) == wheel and lines == []


INNER_TEST = """
    import sys

    import pytest

    from tests._build_mmcv_tool import load_build_tool
    from tests._terminal import terminal_line


    @pytest.fixture
    def built(request, tmp_path):
        tool = load_build_tool()
        write = terminal_line(request.config)
        write("before the fake build")
        command = [sys.executable, "-c", "import time; time.sleep(0.6)"]
        tool.run_logged(command, tmp_path / "log", doing="fake build", report=write, every=0.15)
        print("captured, never shown for a passing test")


    def test_uses_the_build(built):
        pass
"""


def test_the_lines_reach_pytests_terminal_while_output_is_captured(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "before the fake build" in out and "fake build: still running after " in out
    assert out.index("before the fake build") < out.index("fake build: still running") < out.index("1 passed")
    assert "captured, never shown" not in out
